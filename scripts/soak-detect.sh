#!/usr/bin/env bash
# False suspicions and false promotions per hour: a soak of the three-site detection testbed
# (scripts/detect-testbed.sh, tag sk) under a CPU hog and bursts of dropped packets shorter than
# the lease. Nothing dies, so every suspicion is a false suspicion and every lease takeover or
# promotion a false promotion (the goal is 0).
#
#   scripts/soak-detect.sh                        # 20 minutes, probe every 100 ms, TTL 3 s
#   MINUTES=60 INTERVAL=100 TTL=3 HOG=2 scripts/soak-detect.sh
#
# The run: three real etcd members, the two drl daemons of r0 (site-a Primary), a writer (fio
# through the Primary's NBD export, 200 x 4 KiB writes/s, when fio is installed) and HOG busy
# processes (`yes`, default: one per core) beside them. Until MINUTES have passed, bursts follow
# each other with 1-4 s of calm between them, each one of:
#   loss-a     PCT (30-95) % of every packet to and from site a dropped (nft numgen random),
#   isolate-a  everything to and from site a dropped,
#   loss-ab    PCT (30-95) % of the packets between a and b dropped (the witness sees both),
#   cut-ab     everything between a and b dropped,
# for 0.2 s up to half the lease TTL (a burst never outlasts the lease; the Primary may fence
# and hold writes for a moment, which is what the lease is for). At the end every drop rule goes,
# the pair must converge (in sync, site-a still Primary) and both daemons must still run.
# Results: bench-results/detect-soak-TIMESTAMP.md (table) and .csv (every burst with the
# suspicions and fence events inside it, and the lease events of the whole run).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
need_pkgs python3:python3 etcd:etcd-server etcdctl:etcd-client nft:nftables
MINUTES=${MINUTES:-20}
INTERVAL=${INTERVAL:-100}
TTL=${TTL:-3}
HOG=${HOG:-$(nproc)}
SEED=${SEED:-$RANDOM}
export DRL_DET_TAG=sk
drl=$(drl_bin)
top=$(repo_root)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$top/bench-results"
csv="$top/bench-results/detect-soak-$stamp.csv"
md="$top/bench-results/detect-soak-$stamp.md"
tb="$here/detect-testbed.sh"
work=$(mktemp -d /tmp/drl-det-soak.XXXXXX)
. "$here/detect-bench-lib.sh"
hogs=()
stop_side() {
  local p
  for p in "${hogs[@]}" ${fiopid:-} ${evpid_a:-} ${evpid_b:-}; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
on_exit "stop_side; stop_all; '$tb' down >/dev/null 2>&1 || true; rm -rf '$work'"
RANDOM=$SEED

"$tb" up >/dev/null
for s in a b w; do start_etcd $s; done
wait_for "etcd healthy" 60 "$tb" exec w etcdctl --endpoints "http://$(addr a):2379,http://$(addr w):2379" endpoint health
detect_config "$INTERVAL" soak 1 >"$work/drl.toml"
start_drl a
start_drl b
cli a primary r0 --force >/dev/null
wait_for "initial sync" 120 in_sync b
wait_for "site-b sees site-a holding the lease" 30 holder_seen b a
cli a events --json >"$work/events-a.jsonl" 2>/dev/null &
evpid_a=$!
cli b events --json >"$work/events-b.jsonl" 2>/dev/null &
evpid_b=$!
fiopid=
if command -v fio >/dev/null; then
  fio --name=drl-soak --thread --ioengine=nbd --uri="nbd+unix:///?socket=$work/a/r0.nbd" \
    --rw=randwrite --bs=4k --iodepth=4 --size=32m --rate_iops=200 --time_based --runtime=$((MINUTES * 60 + 600)) \
    --output="$work/fio.out" >/dev/null 2>"$work/fio.err" &
  fiopid=$!
else
  warn "fio not installed: the soak runs without a writer"
fi
for _ in $(seq "$HOG"); do
  yes >/dev/null &
  hogs+=($!)
done
log "soaking for $MINUTES min: probe every $INTERVAL ms, lease TTL $TTL s, $HOG CPU hogs, seed $SEED"

echo "start_unix_ms,end_unix_ms,kind,loss_pct" >"$work/bursts.csv"
end=$(($(date +%s) + MINUTES * 60))
kinds=(loss-a isolate-a loss-ab cut-ab)
max_ms=$((TTL * 500))
while [ "$(date +%s)" -lt "$end" ]; do
  kind=${kinds[RANDOM % 4]}
  len_ms=$((200 + RANDOM % (max_ms - 200)))
  pct=$((30 + RANDOM % 66))
  t0=$(date +%s%3N)
  case $kind in
    loss-a) "$tb" loss a "$pct" ;;
    isolate-a) pct=100; "$tb" isolate a ;;
    loss-ab) "$tb" loss a-b "$pct" ;;
    cut-ab) pct=100; "$tb" cut a-b ;;
  esac
  # The burst's length is the fault being injected, not a synchronisation.
  left=$((t0 + len_ms - $(date +%s%3N)))
  [ "$left" -gt 0 ] && sleep "$(awk "BEGIN{print $left/1000}")"
  "$tb" heal
  echo "$t0,$(date +%s%3N),$kind,$pct" >>"$work/bursts.csv"
  sleep "$(awk "BEGIN{print (1000 + $RANDOM % 3000)/1000}")"
done
t_end=$(date +%s%3N)
stop_side
fiopid= evpid_a= evpid_b= hogs=()
"$tb" heal
wait_for "converged after the soak (in sync)" 120 in_sync b
is_primary a || die "site-a is no longer Primary after the soak (a false promotion)"
for s in a b; do kill -0 "$(cat "$work/drl-$s.pid")" 2>/dev/null || die "site-$s's daemon died during the soak"; done

python3 - "$work" "$csv" "$MINUTES" "$INTERVAL" "$TTL" "$HOG" "$SEED" "$t_end" "$(cat /proc/loadavg)" >"$md" <<'PY'
import csv, json, sys
work, out, minutes, iv, ttl, hog, seed, t_end, load = sys.argv[1:10]
bursts = list(csv.DictReader(open(f"{work}/bursts.csv")))
t_start = int(bursts[0]["start_unix_ms"]) if bursts else int(t_end)
hours = (int(t_end) - t_start) / 3600_000 or 1e-9
def evs(site):
    v = []
    for l in open(f"{work}/events-{site}.jsonl"):
        try: v.append(json.loads(l))
        except ValueError: pass
    return v
ev = {"a": evs("a"), "b": evs("b")}
def site_ev(e, health): return e["object"] == "site" and e.get("fields", {}).get("health") == health
def lease_ev(e, *acts): return e["object"] == "lease" and e.get("fields", {}).get("action") in acts
# Events that land after a burst and before the next one belong to it (suspicion lags).
for i, b in enumerate(bursts):
    lo = int(b["start_unix_ms"])
    hi = int(bursts[i + 1]["start_unix_ms"]) if i + 1 < len(bursts) else int(t_end) + 10_000
    inside = lambda e: lo <= e["time_unix_ms"] < hi
    b["suspected_at_b"] = sum(1 for e in ev["b"] if inside(e) and site_ev(e, "suspected"))
    b["suspected_at_a"] = sum(1 for e in ev["a"] if inside(e) and site_ev(e, "suspected"))
    b["fenced_at_a"] = sum(1 for e in ev["a"] if inside(e) and lease_ev(e, "fenced"))
    b["len_ms"] = int(b["end_unix_ms"]) - lo
with open(out, "w") as f:
    w = csv.DictWriter(f, fieldnames=list(bursts[0].keys()) if bursts else ["none"])
    w.writeheader()
    for b in bursts: w.writerow(b)
false_prom = [e for s in "ab" for e in ev[s] if lease_ev(e, "takeover", "promoted", "demoted")]
down = [e for s in "ab" for e in ev[s] if site_ev(e, "down")]
print(f"# Failure detection soak: false suspicions and false promotions (seed {seed})\n")
print(f"{(int(t_end) - t_start) / 60000:.1f} min, probe every {iv} ms, lease TTL {ttl} s, {hog} CPU hogs "
      f"(`yes`), a writer at the Primary; bursts of 0.2 s to {int(ttl) / 2:.1f} s, 1-4 s apart. "
      f"Load average at the end: {load}\n")
print("| burst kind | bursts | burst length p50 / max | B suspected site-a | A suspected site-b | A fenced | per hour: suspicions at B |")
print("|---|---|---|---|---|---|---|")
for k in ["loss-a", "isolate-a", "loss-ab", "cut-ab"]:
    bs = [b for b in bursts if b["kind"] == k]
    if not bs: continue
    ls = sorted(b["len_ms"] for b in bs)
    sb = sum(b["suspected_at_b"] for b in bs); sa = sum(b["suspected_at_a"] for b in bs)
    fa = sum(b["fenced_at_a"] for b in bs)
    print(f"| {k} | {len(bs)} | {ls[len(ls) // 2]} / {ls[-1]} ms | {sb} | {sa} | {fa} | {sb / hours:.0f} |")
tot_s = sum(b["suspected_at_b"] + b["suspected_at_a"] for b in bursts)
print(f"\n**False suspicions: {tot_s} ({tot_s / hours:.0f} per hour; every burst of total loss longer than "
      f"the suspicion time is one by design). Sites declared down: {len(down)}. "
      f"False promotions (lease takeover, promoted or demoted events): {len(false_prom)} ({len(false_prom) / hours:.1f} per hour).**")
for e in false_prom:
    print(f"- {e}")
PY
cat "$md"
log "results: $md, $csv"
