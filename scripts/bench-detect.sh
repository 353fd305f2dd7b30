#!/usr/bin/env bash
# Time to suspicion and to decision after a site kill, at several probe intervals, on the
# three-site detection testbed (scripts/detect-testbed.sh, tag bd): real etcd members, real drl
# daemons, the Primary's site killed (every process in its namespace, its link down).
#
#   scripts/bench-detect.sh                      # KILLS=5 kills at 50, 100 and 200 ms
#   KILLS=50 INTERVALS="50 100 200" TTL=3 scripts/bench-detect.sh
#
# Each round kills the site of the current Primary; the survivor suspects it, takes the lease
# once it expired in etcd and promotes; the dead site comes back (etcd member and daemon),
# resyncs as Secondary, and the next round kills the other site. Per interval: p50, p99 and max
# of kill -> suspicion (the survivor's `site` event), kill -> lease taken and kill -> promoted,
# and of the decision: from the instant the old Primary's key vanished from etcd (its lease
# expired; an `etcdctl watch` at the witness timestamps the DELETE) to the promotion.
# Results: bench-results/detect-TIMESTAMP.md (table), .csv (every round) and .png (CDFs of
# suspicion, promotion and decision per interval, scripts/detect_plot.py; needs matplotlib).
# The machine's load is printed with the table: numbers from a loaded host are upper bounds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
need_pkgs python3:python3 etcd:etcd-server etcdctl:etcd-client
KILLS=${KILLS:-5}
INTERVALS=${INTERVALS:-"50 100 200"}
TTL=${TTL:-3}
export DRL_DET_TAG=bd
drl=$(drl_bin)
top=$(repo_root)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$top/bench-results"
csv="$top/bench-results/detect-$stamp.csv"
md="$top/bench-results/detect-$stamp.md"
png="$top/bench-results/detect-$stamp.png"
echo "interval_ms,round,killed,suspect_ms,lease_ms,promote_ms,expiry_ms,decide_ms" >"$csv"
tb="$here/detect-testbed.sh"
work=$(mktemp -d /tmp/drl-det-bench.XXXXXX)
. "$here/detect-bench-lib.sh"
on_exit "stop_all; '$tb' down >/dev/null 2>&1 || true; rm -rf '$work'"

for iv in $INTERVALS; do
  "$tb" up >/dev/null
  rm -rf "$work"/* 
  for s in a b w; do start_etcd $s; done
  wait_for "etcd healthy" 60 "$tb" exec w etcdctl --endpoints "http://$(addr a):2379,http://$(addr w):2379" endpoint health
  detect_config "$iv" bench >"$work/drl.toml"
  start_drl a; start_drl b
  cli a primary r0 --force >/dev/null
  primary=a
  for round in $(seq "$KILLS"); do
    survivor=$(other $primary)
    wait_for "in sync" 120 in_sync $survivor
    wait_for "survivor sees the holder" 30 holder_seen $survivor $primary
    cli $survivor events --json >"$work/events.jsonl" 2>/dev/null &
    evpid=$!
    # The witness watches the key: the DELETE is the old lease expiring in etcd.
    python3 -u -c 'import signal, subprocess, sys, time
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
signal.signal(signal.SIGTERM, lambda *_: (p.kill(), sys.exit(0)))
for l in p.stdout: print(int(time.time() * 1000), l.strip(), flush=True)' \
      "$tb" exec w etcdctl --endpoints "http://$(addr w):2379" watch /drl/bench/scope/r0/primary >"$work/watch.txt" &
    watchpid=$!
    sleep 0.3 # the subscription registers (not a synchronisation of the measured path)
    t0=$("$tb" kill-site $primary | sed -n 's/^killed_unix_ms=//p')
    wait_for "promotion at site-$survivor" 60 is_primary $survivor
    kill $evpid 2>/dev/null || true; wait $evpid 2>/dev/null || true
    kill "$watchpid" 2>/dev/null || true; wait "$watchpid" 2>/dev/null || true
    python3 - "$work/events.jsonl" "$t0" "$iv" "$round" "$primary" "$primary" "$work/watch.txt" >>"$csv" <<'PY'
import json, sys
path, t0, iv, rnd, killed, site = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
sus = lease = prom = expiry = None
for l in open(sys.argv[7]):
    t, _, what = l.strip().partition(" ")
    if expiry is None and what == "DELETE" and int(t) >= t0: expiry = int(t) - t0
for l in open(path):
    try: e = json.loads(l)
    except ValueError: continue
    f = e.get("fields", {})
    t = e["time_unix_ms"] - t0
    if sus is None and e["object"] == "site" and e["name"] == "site-" + site and f.get("health") == "suspected": sus = t
    if lease is None and e["object"] == "lease" and f.get("action") == "takeover": lease = t
    if prom is None and e["object"] == "lease" and f.get("action") == "promoted": prom = t
decide = prom - expiry if prom is not None and expiry is not None else None
print(f"{iv},{rnd},site-{killed},{sus},{lease},{prom},{expiry},{decide}")
PY
    tail -1 "$csv" >&2
    # The dead site comes back as Secondary and resyncs; the next round kills the new Primary.
    "$tb" revive-site $primary
    start_etcd $primary
    start_drl $primary
    primary=$survivor
  done
  stop_all
  "$tb" down >/dev/null
done

python3 - "$csv" "$TTL" "$(cat /proc/loadavg)" >"$md" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else None
print(f"# Failure detection: site kill -> suspicion / lease / promotion (TTL {sys.argv[2]} s)\n")
print(f"load average at the end: {sys.argv[3]}\n")
print("kill -> suspected, kill -> lease taken, kill -> promoted; decision: lease expired in etcd -> promoted.\n")
print("| probe interval | kills | suspect p50 | p99 | max | lease taken p50 | p99 | max | promoted p50 | p99 | max | decision p50 | p99 | max |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for iv in sorted({r['interval_ms'] for r in rows}, key=int):
    rs = [r for r in rows if r['interval_ms'] == iv]
    cols = []
    for k in ('suspect_ms', 'lease_ms', 'promote_ms', 'decide_ms'):
        v = [int(r[k]) for r in rs if r[k] not in ('None', '')]
        cols += [pct(v, 50), pct(v, 99), max(v) if v else None]
    print(f"| {iv} ms | {len(rs)} | " + " | ".join(f"{c} ms" if c is not None else "-" for c in cols) + " |")
PY
cat "$md"
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
  /usr/bin/python3 "$here/detect_plot.py" "$csv" "$png" "$TTL" || warn "plot failed"
else
  warn "no python3-matplotlib: no CDF plot (apt-get install python3-matplotlib)"
  png=""
fi
log "results: $md, $csv${png:+, $png}"
