#!/usr/bin/env bash
# The disaster drill as a benchmark: scripts/drill.sh at each link rate and volume size, one
# table of RPO and RTO with every step, replication beside the snapshot policy of the same kill
# (snapshots streamed to Swift, the newest restored), and a plot (bench-results/bench-drill-*/).
#
#   scripts/bench-drill.sh                          # RATES="500mbit 100mbit 50mbit" SIZES="1GiB 5GiB 10GiB"
#   RATES=100mbit SIZES="1GiB 5GiB" REPEAT=1 scripts/bench-drill.sh
#   SHORT=1 (the drill's --short workload), SEED=N (else one random seed per run), VOLUMES=2,
#   FILL=0.25 (random data in each volume before protection: what a snapshot restore must move;
#   default 0), SNAPSHOT_EVERY=1s, SEPARATE=1 (each volume its own resource, not one group), BACKUP_NODES=1|2
#   (drl daemons at site B; 2 needs SEPARATE=1, its default then), TAG=drill (the
#   testbed's namespaces),
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
            args+=(--fill "${FILL:-0}" --snapshot-every "${SNAPSHOT_EVERY:-1s}" --tag "${TAG:-drill}")
            [ "${SEPARATE:-0}" = 0 ] || args+=(--separate) # each volume its own resource
            [ -z "${BACKUP_NODES:-}" ] || args+=(--backup-nodes "$BACKUP_NODES")
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

/usr/bin/python3 "$here/bench_drill_report.py" "$out"
log "results in $out"
