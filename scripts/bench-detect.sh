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
# of kill -> suspicion (the survivor's `site` event), kill -> lease taken and kill -> promoted.
# Results: bench-results/detect-TIMESTAMP.md (table) and .csv (every round).
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
echo "interval_ms,round,killed,suspect_ms,lease_ms,promote_ms" >"$csv"
tb="$here/detect-testbed.sh"
work=$(mktemp -d /tmp/drl-det-bench.XXXXXX)
on_exit "'$tb' down >/dev/null 2>&1 || true; rm -rf '$work'"

addr() { "$tb" addr "$1"; }
other() { [ "$1" = a ] && echo b || echo a; }

start_etcd() { # SITE
  "$tb" etcd "$1" "$work/etcd-$1" >>"$work/etcd-$1.log" 2>&1 &
  echo $! >"$work/etcd-$1.pid"
}
start_drl() { # SITE INTERVAL
  local s=$1
  mkdir -p "$work/$s"
  rm -f "$work/site-$s.sock"
  "$tb" exec "$s" "$drl" daemon --config "$work/drl.toml" --node "site-$s" >>"$work/site-$s.log" 2>&1 &
  echo $! >"$work/drl-$s.pid"
  for _ in $(seq 200); do [ -S "$work/site-$s.sock" ] && return 0; sleep 0.05; done
  die "site-$s daemon did not start (log $work/site-$s.log)"
}
cli() { local s=$1; shift; "$drl" --config "$work/drl.toml" --node "site-$s" "$@"; }
field() { # SITE PYTHON-EXPR over status json r
  cli "$1" status r0 --json 2>/dev/null | python3 -c "import json,sys
v=json.load(sys.stdin); r=v['resources'][0] if 'resources' in v else v
print($2)" 2>/dev/null || echo none
}
wait_for() { # DESCRIPTION TIMEOUT_S COMMAND...
  local what=$1 t=$2 i
  shift 2
  for ((i = 0; i < t * 10; i++)); do "$@" && return 0; sleep 0.1; done
  die "timed out waiting for $what"
}
in_sync() { [ "$(field "$1" "r['connection']=='Connected' and r['disk']=='UpToDate' and r['peer_disk']=='UpToDate' and r['out_of_sync_bytes']==0")" = True ]; }
is_primary() { [ "$(field "$1" "r['role']")" = Primary ]; }
holder_seen() { cli "$1" detect status --json 2>/dev/null | python3 -c "import json,sys; v=json.load(sys.stdin); sys.exit(0 if v['scopes'][0]['holder']=='site-$2' else 1)"; }

config() { # INTERVAL
  local d=$work s
  for s in a b; do printf '[[node]]\nname = "site-%s"\ncontrol-socket = "%s/site-%s.sock"\n\n' "$s" "$d" "$s"; done
  printf '[[resource]]\nname = "r0"\nsize = "64MiB"\nsecret = "bench-detect"\n\n'
  for s in a b; do
    printf '[resource.on.site-%s]\naddress = "%s:7789"\ndisk = "%s/%s/r0.img"\nmeta = "%s/%s/r0.meta"\n\n' "$s" "$(addr $s)" "$d" "$s" "$d" "$s"
  done
  printf '[detect]\ncluster = "bench"\netcd = ["http://%s:2379", "http://%s:2379", "http://%s:2379"]\n' "$(addr a)" "$(addr b)" "$(addr w)"
  printf 'probe-interval = "%sms"\nprobe-timeout = "%sms"\nlease-ttl = "%ss"\n\n' "$1" "$1" "$TTL"
  for s in a b; do printf '[detect.on.site-%s]\nlisten = "%s:7790"\n\n' "$s" "$(addr $s)"; done
}

for iv in $INTERVALS; do
  "$tb" up >/dev/null
  rm -rf "$work"/* 
  for s in a b w; do start_etcd $s; done
  wait_for "etcd healthy" 60 "$tb" exec w etcdctl --endpoints "http://$(addr a):2379,http://$(addr w):2379" endpoint health
  config "$iv" >"$work/drl.toml"
  start_drl a; start_drl b
  cli a primary r0 --force >/dev/null
  primary=a
  for round in $(seq "$KILLS"); do
    survivor=$(other $primary)
    wait_for "in sync" 120 in_sync $survivor
    wait_for "survivor sees the holder" 30 holder_seen $survivor $primary
    cli $survivor events --json >"$work/events.jsonl" 2>/dev/null &
    evpid=$!
    sleep 0.3 # the subscription registers (not a synchronisation of the measured path)
    t0=$(date +%s%3N)
    "$tb" kill-site $primary
    wait_for "promotion at site-$survivor" 60 is_primary $survivor
    kill $evpid 2>/dev/null || true; wait $evpid 2>/dev/null || true
    python3 - "$work/events.jsonl" "$t0" "$iv" "$round" "$primary" "$primary" >>"$csv" <<'PY'
import json, sys
path, t0, iv, rnd, killed, site = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
sus = lease = prom = None
for l in open(path):
    try: e = json.loads(l)
    except ValueError: continue
    f = e.get("fields", {})
    t = e["time_unix_ms"] - t0
    if sus is None and e["object"] == "site" and e["name"] == "site-" + site and f.get("health") == "suspected": sus = t
    if lease is None and e["object"] == "lease" and f.get("action") == "takeover": lease = t
    if prom is None and e["object"] == "lease" and f.get("action") == "promoted": prom = t
print(f"{iv},{rnd},site-{killed},{sus},{lease},{prom}")
PY
    tail -1 "$csv" >&2
    # The dead site comes back as Secondary and resyncs; the next round kills the new Primary.
    "$tb" revive-site $primary
    start_etcd $primary
    start_drl $primary
    primary=$survivor
  done
  # etcd exits 143 on SIGTERM: reap without letting errexit see it.
  for p in "$work"/drl-*.pid "$work"/etcd-*.pid; do
    kill "$(cat "$p")" 2>/dev/null || true
    wait "$(cat "$p")" 2>/dev/null || true
  done
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
print("| probe interval | kills | suspect p50 | p99 | max | lease taken p50 | p99 | max | promoted p50 | p99 | max |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for iv in sorted({r['interval_ms'] for r in rows}, key=int):
    rs = [r for r in rows if r['interval_ms'] == iv]
    cols = []
    for k in ('suspect_ms', 'lease_ms', 'promote_ms'):
        v = [int(r[k]) for r in rs if r[k] not in ('None', '')]
        cols += [pct(v, 50), pct(v, 99), max(v) if v else None]
    print(f"| {iv} ms | {len(rs)} | " + " | ".join(f"{c} ms" if c is not None else "-" for c in cols) + " |")
PY
cat "$md"
log "results: $md, $csv"
