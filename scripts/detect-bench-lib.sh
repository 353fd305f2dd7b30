# Helpers shared by scripts/bench-detect.sh and scripts/soak-detect.sh: the two drl daemons of
# one resource `r0` (sites a and b) and three etcd members on the detection testbed
# (scripts/detect-testbed.sh). Source after scripts/lib.sh, with these set:
#   tb    path of detect-testbed.sh        work  the run's directory (configs, logs, pid files)
#   drl   the drl binary                   TTL   the lease TTL in seconds
# and DRL_DET_TAG exported (the testbed's namespaces).
#
# - start_etcd SITE, start_drl SITE: run one etcd member / one daemon inside SITE (a, b or w).
# - stop_all: SIGTERM every daemon and etcd member this run started (by pid file), and reap.
# - cli SITE ARGS...: the drl CLI against site-SITE's daemon.
# - field SITE EXPR: a Python expression over r0's status JSON (r), printed ("none" if down).
# - wait_for WHAT TIMEOUT_S CMD...: poll CMD every 100 ms until it succeeds, or die.
# - in_sync SITE, is_primary SITE, holder_seen SITE HOLDER-SITE: predicates for wait_for.
# - detect_config INTERVAL_MS CLUSTER [NBD]: the config text (NBD=1 adds NBD exports).

addr() { "$tb" addr "$1"; }
other() { [ "$1" = a ] && echo b || echo a; }

start_etcd() { # SITE
  "$tb" etcd "$1" "$work/etcd-$1" >>"$work/etcd-$1.log" 2>&1 &
  echo $! >"$work/etcd-$1.pid"
}
start_drl() { # SITE
  local s=$1
  mkdir -p "$work/$s"
  rm -f "$work/site-$s.sock"
  "$tb" exec "$s" "$drl" daemon --config "$work/drl.toml" --node "site-$s" >>"$work/site-$s.log" 2>&1 &
  echo $! >"$work/drl-$s.pid"
  for _ in $(seq 200); do [ -S "$work/site-$s.sock" ] && return 0; sleep 0.05; done
  die "site-$s daemon did not start (log $work/site-$s.log)"
}
stop_all() {
  # etcd exits 143 on SIGTERM: reap without letting errexit see it.
  local p
  for p in "$work"/drl-*.pid "$work"/etcd-*.pid; do
    [ -f "$p" ] || continue
    kill "$(cat "$p")" 2>/dev/null || true
    wait "$(cat "$p")" 2>/dev/null || true
  done
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

detect_config() { # INTERVAL_MS CLUSTER [NBD]
  local d=$work s nbd
  for s in a b; do printf '[[node]]\nname = "site-%s"\ncontrol-socket = "%s/site-%s.sock"\n\n' "$s" "$d" "$s"; done
  printf '[[resource]]\nname = "r0"\nsize = "64MiB"\nsecret = "bench-detect"\n\n'
  for s in a b; do
    nbd=""
    [ -n "${3:-}" ] && nbd=$(printf 'nbd = "%s/%s/r0.nbd"\n' "$d" "$s")
    printf '[resource.on.site-%s]\naddress = "%s:7789"\ndisk = "%s/%s/r0.img"\nmeta = "%s/%s/r0.meta"\n%s\n\n' "$s" "$(addr $s)" "$d" "$s" "$d" "$s" "$nbd"
  done
  printf '[detect]\ncluster = "%s"\netcd = ["http://%s:2379", "http://%s:2379", "http://%s:2379"]\n' "$2" "$(addr a)" "$(addr b)" "$(addr w)"
  printf 'probe-interval = "%sms"\nprobe-timeout = "%sms"\nlease-ttl = "%ss"\n\n' "$1" "$1" "$TTL"
  for s in a b; do printf '[detect.on.site-%s]\nlisten = "%s:7790"\n\n' "$s" "$(addr $s)"; done
}
