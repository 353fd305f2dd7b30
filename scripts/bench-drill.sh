#!/usr/bin/env bash
# The disaster drill as a benchmark: scripts/drill.sh at each link rate and volume size, one
# table of RPO and RTO with every step, and a plot (bench-results/bench-drill-*/).
#
#   scripts/bench-drill.sh                          # RATES="500mbit 100mbit 50mbit" SIZES="1GiB 5GiB 10GiB"
#   RATES=100mbit SIZES="1GiB 5GiB" REPEAT=1 scripts/bench-drill.sh
#   SHORT=1 (the drill's --short workload), SEED=N (else one random seed per run), VOLUMES=2,
#   DRL_BIN=path/to/drl (a build of your own, drl-drill next to it; else a release build)
#
# Each run is a whole drill (its own testbed, plan, stack and fail back), so a row is what an
# operator would measure. The machine's load (1-minute average, before and after each run) is
# in the table: on a shared 2-core host the Heat/Nova steps move with it. Needs what the drill
# needs (root, the cloud; it installs the rest).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
rates=${RATES:-500mbit 100mbit 50mbit}
sizes=${SIZES:-1GiB 5GiB 10GiB}
repeat=${REPEAT:-1}
out=$(repo_root)/bench-results/bench-drill-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
if [ -z "${DRL_BIN:-}" ]; then # else: a build of the caller's, drl-drill next to it
    DRL_BIN=$(drl_bin)
    (cd "$(repo_root)" && cargo build --release --quiet --bin drl-drill) >&2 || die "cargo build of drl-drill failed"
fi
export DRL_BIN
load() { cut -d' ' -f1 /proc/loadavg; }

for rate in $rates; do
    for size in $sizes; do
        for ((i = 1; i <= repeat; i++)); do
            d=$out/$rate-$size-$i
            args=(--rate "$rate" --volume-size "$size" --volumes "${VOLUMES:-2}" --out "$d")
            [ -z "${SEED:-}" ] || args+=(--seed "$SEED")
            [ "${SHORT:-0}" = 0 ] || args+=(--short)
            l0=$(load)
            log "drill: $rate, ${VOLUMES:-2} x $size, run $i (load $l0)"
            if "$here/drill.sh" "${args[@]}" >"$out/$rate-$size-$i.log" 2>&1; then
                python3 - "$d/summary.json" "$l0" "$(load)" >"$d/load.json" <<'PY'
import json, sys
print(json.dumps({"load_before": float(sys.argv[2]), "load_after": float(sys.argv[3])}))
PY
            else
                warn "the drill failed at $rate x $size (run $i): $out/$rate-$size-$i.log"
            fi
        done
    done
done

python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
rows = []
for s in sorted(glob.glob(os.path.join(out, "*", "summary.json"))):
    d = os.path.dirname(s)
    j = json.load(open(s))
    l = json.load(open(os.path.join(d, "load.json"))) if os.path.exists(os.path.join(d, "load.json")) else {}
    st = j["steps_ms"]
    rows.append([j["rate"], j["volume_size"], j["volumes"], j["writes_acked"], j["lost_writes"],
                 f'{j["rpo_seconds"]:.3f}', j["lag_at_kill_ms"], st["suspicion"], st["decision"],
                 st["promote"], j["kill_to_first_read_ms"], st["check"], st["import"], st["rewrite"],
                 st["stack"], j["kill_to_stack_complete_ms"], j["failback_resync_bytes"],
                 l.get("load_before", ""), l.get("load_after", "")])
head = ["rate", "size", "volumes", "acked writes", "lost writes", "RPO s", "lag at kill ms",
        "suspicion ms", "decision ms", "promote ms", "kill->first read ms", "check ms", "import ms",
        "rewrite ms", "stack ms", "kill->CREATE_COMPLETE ms", "fail back resync bytes",
        "load before", "load after"]
with open(os.path.join(out, "results.csv"), "w") as f:
    f.write(",".join(head) + "\n")
    for r in rows:
        f.write(",".join(str(x) for x in r) + "\n")
with open(os.path.join(out, "results.md"), "w") as f:
    f.write("# drl disaster drill: RPO and RTO by link rate and volume size (replication)\n\n")
    f.write("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
    for r in rows:
        f.write("| " + " | ".join(str(x) for x in r) + " |\n")
print(open(os.path.join(out, "results.md")).read())
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
steps = [("suspicion", 7), ("decision", 8), ("promote", 9), ("check", 11), ("import", 12),
         ("rewrite", 13), ("stack", 14)]
fig, ax = plt.subplots(figsize=(10, 4.5))
labels = [f"{r[0]}\n{r[1]}" for r in rows]
left = [0.0] * len(rows)
for name, col in steps:
    w = [float(r[col] or 0) / 1000 for r in rows]
    ax.barh(range(len(rows)), w, left=left, label=name)
    left = [a + b for a, b in zip(left, w)]
# What the steps do not cover (waits between them) up to CREATE_COMPLETE.
w = [max(float(r[15] or 0) / 1000 - l, 0) for r, l in zip(rows, left)]
ax.barh(range(len(rows)), w, left=left, label="between steps", color="#dddddd")
ax.set_yticks(range(len(rows)), labels, fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("seconds from the kill to CREATE_COMPLETE, by step")
ax.set_title("drl disaster drill: RTO by step, replication")
ax.legend(fontsize=8, ncol=4)
fig.tight_layout()
fig.savefig(os.path.join(out, "results.png"), dpi=110)
PY
log "results in $out"
