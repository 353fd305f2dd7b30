#!/usr/bin/env bash
# The disaster drill: one command runs a whole disaster on this machine and reports RPO, RTO
# and a timeline.
#
#   scripts/drill.sh [--rate 100mbit] [--volume-size 256MiB] [--volumes 2] [--seed N]
#                    [--writer-rate 1500] [--lease-ttl 3] [--out DIR] [--keep] [--short]
#
# What it does, each step timed (timeline.csv / timeline.md / timeline.png in --out):
#  1. three sites as network namespaces (site A, site B, a witness) behind a router namespace
#     (scripts/detect-testbed.sh), the A-B path shaped with tc tbf at --rate, one etcd member
#     per site, one drl daemon at A and at B with site-failure detection ([detect]: UDP
#     pingers, a lease per resource in etcd, self-fencing), --volumes replicated resources
#     (A -> B), initial sync;
#  2. a workload at A (drl-drill write): dependent 4 KiB writes alternating over the volumes,
#     every write logged before it is sent and when it is acknowledged; A's status (lag,
#     send queue) sampled every 100 ms;
#  3. site A killed at a random moment (seeded): every process of the site SIGKILLed (its
#     daemon, the writer, its etcd member), its link down;
#  4. nothing touched: B's pingers suspect A, B takes each resource's lease once A's expired
#     in etcd (the witness makes the majority) and promotes itself; the times come from B's
#     own events;
#  5. B's volumes read through NBD and held against the writer's log (drl-drill check): each
#     volume a prefix of the writes, nothing damaged; RPO = the acknowledged writes missing
#     (count, bytes, time span) against the lag A reported at the kill;
#  6. fail back: A returns as Secondary, resyncs only what changed (bytes against the volume
#     size), a workload at B meanwhile, then a planned switchover back to A with RPO 0 (every
#     write acknowledged at B is at A, the disks identical);
#  7. the summary table, the timeline (markdown + CSV) and a plot.
#
# The recovery through Cinder and Heat (`drl dr recover`, issue "Recovery") is not driven by
# the drill yet: its RTO here ends at the first read of the promoted volumes at B, and the
# report says so; no step claims a part that did not run.
#
# Exits non-zero if a check fails. Needs root (network namespaces). Installs what it needs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

rate=100mbit size=256MiB nvol=2 seed=$RANDOM writer_rate=1500 ttl=3 out="" keep=0 short=0
while [ $# -gt 0 ]; do
    case "$1" in
    --rate) rate=$2; shift 2 ;;
    --volume-size) size=$2; shift 2 ;;
    --volumes) nvol=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --writer-rate) writer_rate=$2; shift 2 ;;
    --lease-ttl) ttl=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --short) short=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "the drill needs root: its sites are network namespaces"
[[ $nvol =~ ^[1-9][0-9]*$ ]] && [ "$nvol" -le 8 ] || die "--volumes must be 1..8"
need_pkgs ip:iproute2 tc:iproute2 python3:python3 etcd:etcd-server etcdctl:etcd-client

drl=$(drl_bin)
drill=$(dirname "$drl")/drl-drill
if [ -z "${DRL_BIN:-}" ]; then
    (cd "$(repo_root)" && cargo build --release --quiet --bin drl-drill) >&2 || die "cargo build of drl-drill failed"
fi
[ -x "$drill" ] || die "no drl-drill next to $drl (set DRL_BIN to a build that has both)"

work=$(mktemp -d /tmp/drl-drill.XXXXXX)
[ -n "$out" ] || out=$(repo_root)/bench-results/drill-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
# The three-site testbed: namespaces drl-det-drill-{a,b,w} behind the router drl-det-drill-r.
export DRL_DET_TAG=drill
bed() { "$here/detect-testbed.sh" "$@"; }
NS_A=drl-det-drill-a NS_B=drl-det-drill-b NS_R=drl-det-drill-r
ADDR_A=$(bed addr a) ADDR_B=$(bed addr b) ADDR_W=$(bed addr w)
RANDOM=$seed

t0=$(date +%s%N)
events=$work/timeline.csv
echo "t_ms,site,event,detail" >"$events"
ev() { # SITE EVENT DETAIL — one timeline row, relative to the drill's start
    local t=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "$t,$1,$2,\"$3\"" >>"$events"
    log "[$((t / 1000)).$(printf %03d $((t % 1000)))s] $1: $2 ${3:+($3)}"
}
ev_at() { # UNIX_MS SITE EVENT DETAIL — a row at the time an event really happened (a daemon's record)
    local t=$(( $1 - t0 / 1000000 ))
    echo "$t,$2,$3,\"$4\"" >>"$events"
    log "[$((t / 1000)).$(printf %03d $((t % 1000)))s] $2: $3 ${4:+($4)}"
}
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# --- the sites -------------------------------------------------------------------------------
cfg=$work/drl.toml
{
    for s in a b; do printf '[[node]]\nname = "site-%s"\ncontrol-socket = "%s/site-%s.sock"\n\n' "$s" "$work" "$s"; done
    for ((v = 0; v < nvol; v++)); do
        printf '[[resource]]\nname = "r%d"\nsize = "%s"\nsecret = "drill-secret"\n' "$v" "$size"
        for s in a b; do
            addr=$([ $s = a ] && echo "$ADDR_A" || echo "$ADDR_B")
            printf '[resource.on.site-%s]\naddress = "%s:%d"\n' "$s" "$addr" $((7800 + v))
            printf 'disk = "%s/%s/r%d.img"\nmeta = "%s/%s/r%d.meta"\nnbd = "%s/%s/r%d.nbd"\n' \
                "$work" $s $v "$work" $s $v "$work" $s $v
        done
        echo
    done
    printf '[stream]\nvault-dir = "%s/vault"\n\n' "$work"
    printf '[detect]\ncluster = "drill"\netcd = ["http://%s:2379", "http://%s:2379", "http://%s:2379"]\nlease-ttl = "%ss"\n\n' \
        "$ADDR_A" "$ADDR_B" "$ADDR_W" "$ttl"
    printf '[detect.on.site-a]\nlisten = "%s:7790"\n\n[detect.on.site-b]\nlisten = "%s:7790"\n' "$ADDR_A" "$ADDR_B"
} >"$cfg"
mkdir -p "$work/a" "$work/b"

declare -A pid
on() { local s=$1; shift; "$drl" --config "$cfg" --node "site-$s" "$@"; }
start_daemon() { # SITE
    local s=$1 ns
    ns=$([ "$s" = a ] && echo "$NS_A" || echo "$NS_B")
    rm -f "$work/site-$s.sock" "$work/$s"/*.nbd
    ip netns exec "$ns" "$drl" daemon --config "$cfg" --node "site-$s" 2>>"$work/$s.log" &
    pid[$s]=$!
    wait_for_socket "$work/site-$s.sock" 30 "${pid[$s]}" || die "site $s did not start: $(tail -5 "$work/$s.log")"
}
field() { # SITE RES FIELD
    on "$1" status "$2" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['resources'][0].get('$3'))"
}
all_res() { for ((v = 0; v < nvol; v++)); do echo "r$v"; done; }
socks() { # SITE -> --socket args
    for ((v = 0; v < nvol; v++)); do printf -- '--socket %s/%s/r%d.nbd ' "$work" "$1" $v; done
}
# wait_until WHAT SECONDS CMD... — CMD is the full predicate; prints progress while it waits.
wait_until() {
    local what=$1 secs=$2 end; shift 2
    end=$(($(date +%s) + secs))
    until "$@"; do
        [ "$(date +%s)" -lt "$end" ] || die "timed out after ${secs}s waiting for: $what"
        sleep 0.1
    done
}
in_sync() { # every resource UpToDate on both sides, nothing out of sync, A->B established
    local r
    for r in $(all_res); do
        [ "$(on a status "$r" --json | python3 -c "import json,sys; r=json.load(sys.stdin)['resources'][0]; print(r['disk'], r.get('peer_disk'), r['out_of_sync_bytes'], r['send_queue_bytes'], r['replication'])")" = "UpToDate UpToDate 0 0 Established" ] || return 1
    done
}

cleanup() {
    local st=$?
    [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null
    [ -n "${evtap:-}" ] && kill "$evtap" 2>/dev/null
    if [ $keep = 1 ]; then
        log "left running (--keep): config $cfg, logs in $work"
        return
    fi
    for s in a b; do [ -n "${pid[$s]:-}" ] && stop_pid "${pid[$s]}" 5; done
    for s in a b w; do ip netns pids "drl-det-drill-$s" 2>/dev/null | xargs -r kill -9 2>/dev/null; done
    bed down >/dev/null 2>&1 || true
    cp "$work"/*.log "$out/" 2>/dev/null || true
    rm -rf "$work"
    exit $st
}
trap cleanup EXIT

bed up >/dev/null 2>&1 || die "the three-site testbed did not come up (scripts/detect-testbed.sh up)"
# Shape the A-B path in the router: egress towards B carries A->B, towards A carries B->A.
bps=$(python3 - "$rate" <<'PY'
import re, sys
m = re.fullmatch(r'(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)?', sys.argv[1].lower())
if not m: sys.exit("bad --rate " + sys.argv[1] + " (use e.g. 100mbit)")
n = float(m.group(1)) * {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}[m.group(2)]
print(int(n * (8 if m.group(3) == 'bps' else 1)))
PY
) || die "bad --rate $rate"
burst=$((bps / 8 / 250)); [ "$burst" -ge 32768 ] || burst=32768
for s in a b; do tc -n "$NS_R" qdisc replace dev "r$s" root tbf rate "${bps}bit" burst "$burst" latency 100ms; done
ev - sites-up "site-a $ADDR_A, site-b $ADDR_B, witness $ADDR_W; A-B shaped to $rate"
start_etcd() { # SITE
    bed etcd "$1" "$work/etcd-$1" >"$work/etcd-$1.log" 2>&1 &
}
for s in a b w; do start_etcd $s; done
etcd_ok() { ip netns exec "$NS_B" etcdctl --endpoints "http://$ADDR_A:2379,http://$ADDR_B:2379,http://$ADDR_W:2379" endpoint health >/dev/null 2>&1; }
wait_until "etcd: all three members healthy" 60 etcd_ok
ev - etcd-up "one member per site, lease TTL ${ttl}s"
start_daemon a
start_daemon b
# B's own record of what it saw: site health, leases, promotions (JSON lines with times).
on b events --json >"$work/events-b.jsonl" 2>/dev/null &
evtap=$!
for r in $(all_res); do on a primary "$r" --force >/dev/null; done
ev a primary "$(all_res | tr '\n' ' ')"
wait_until "initial sync" 600 in_sync
ev - in-sync "initial sync done"

# --- the workload, and the kill ----------------------------------------------------------------
wlog=$work/writer-a.log
# The workload spreads over the first quarter of each volume: the fail back must resync only that.
span_blocks=$(( $(on a status r0 --json | python3 -c "import json,sys; print(json.load(sys.stdin)['resources'][0]['size_bytes'])") / 4096 / 4 ))
[ "$span_blocks" -le 16384 ] || span_blocks=16384
# shellcheck disable=SC2046
ip netns exec "$NS_A" "$drill" write $(socks a) --log "$wlog" --rate "$writer_rate" --seed "$seed" --blocks "$span_blocks" \
    >"$work/writer-a.out" 2>&1 &
writer=$!
ev a workload-start "$writer_rate writes/s over $nvol volumes"
# A's own record of lag and send queue, every 100 ms, until the kill.
(
    while :; do
        on a status --json 2>/dev/null | python3 -c "
import json,sys,time
for r in json.load(sys.stdin)['resources']:
    print(time.time_ns(), r['name'], r.get('lag_ms') or 0, r.get('send_queue_bytes') or 0)" 2>/dev/null || true
        sleep 0.1
    done
) >"$work/lag-a.txt" &
sampler=$!
if [ $short = 1 ]; then run_ms=$((1500 + RANDOM % 1500)); else run_ms=$((3000 + RANDOM % 5000)); fi
# The workload runs for a random time: sleeping here is the experiment's clock, not a wait.
sleep "$(awk "BEGIN{print $run_ms/1000}")"

kill -0 "$writer" 2>/dev/null || die "the workload stopped before the kill: $(cat "$work/writer-a.out")"
t_kill=$(date +%s%N)
bed kill-site a
kill "$sampler" 2>/dev/null; sampler=""
wait "${pid[a]}" 2>/dev/null || true; unset 'pid[a]'
wait "$writer" 2>/dev/null || true
ev_at "$((t_kill / 1000000))" a killed "after ${run_ms} ms of workload; daemon, writer and etcd member SIGKILLed, link down"
lag_at_kill=$(awk 'BEGIN{m=0} {if ($3>m) m=$3} END{print m}' <(tail -n $((nvol * 3)) "$work/lag-a.txt"))
ev a lag-at-kill "${lag_at_kill} ms (A's last samples)"

# --- detection, lease, promotion: nothing is touched -------------------------------------------
primary_at_b() {
    local r
    for r in $(all_res); do [ "$(field b "$r" role)" = Primary ] || return 1; done
}
wait_until "B promoted itself (detection, lease in etcd)" $((60 + 4 * ttl)) primary_at_b
t_promote=$(date +%s%N)
# Times from B's own events (unix ms): first suspicion of site-a, last lease taken, last promoted.
read -r t_susp t_lease t_prom < <(python3 - "$work/events-b.jsonl" "$((t_kill / 1000000))" <<'PY'
import json, sys
kill = int(sys.argv[2]); susp = lease = prom = 0
for line in open(sys.argv[1]):
    try: e = json.loads(line)
    except ValueError: continue
    t, f = e.get("time_unix_ms", 0), e.get("fields", {})
    if t < kill: continue
    if e.get("object") == "site" and e.get("name") == "site-a" and f.get("health") == "suspected" and not susp: susp = t
    if e.get("object") == "lease" and f.get("action") == "takeover": lease = max(lease, t)
    if e.get("object") == "lease" and f.get("action") == "promoted": prom = max(prom, t)
print(susp, lease, prom)
PY
)
[ "$t_susp" != 0 ] || die "B never reported site-a suspected (events in $work/events-b.jsonl)"
[ "$t_prom" != 0 ] || t_prom=$((t_promote / 1000000))
t_detect=$((t_susp * 1000000))
ev_at "$t_susp" b suspected "site-a suspected by B's pingers ($((t_susp - t_kill / 1000000)) ms after the kill)"
[ "$t_lease" = 0 ] || ev_at "$t_lease" b lease-taken "A's lease expired in etcd; B holds every resource's key ($((t_lease - t_kill / 1000000)) ms)"
ev_at "$t_prom" b promoted "automatically, by the lease holder ($((t_prom - t_kill / 1000000)) ms after the kill)"
t_promote=$((t_prom * 1000000))

# --- the verdict --------------------------------------------------------------------------------
# shellcheck disable=SC2046
"$drill" check --log "$wlog" $(socks b) --json >"$work/check-b.json" || true
python3 - "$work/check-b.json" >"$work/check-b.txt" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
print(v["prefix"], v["group_prefix"], v["lost_writes"], v["lost_bytes"], v["rpo_seconds"], v["first_read_ns"], v["writes_acked"])
for vol in v["volumes"]:
    for x in vol["violations"][:5]:
        print("violation:", x, file=sys.stderr)
PY
read -r prefix group_prefix lost lost_bytes rpo_s first_read_ns acked <"$work/check-b.txt"
ev_at "$((first_read_ns / 1000000))" b first-read "volumes readable at B"
[ "$prefix" = True ] || die "B's volumes are NOT a prefix of the acknowledged writes (see $work/check-b.json)"
ev b verified "prefix of the writer's log: lost $lost of $acked acknowledged writes ($lost_bytes bytes, ${rpo_s} s)"
rpo_ok=$(python3 -c "print($rpo_s * 1000 <= $lag_at_kill + 200)")
[ "$rpo_ok" = True ] || die "RPO ${rpo_s}s exceeds the lag A reported at the kill (${lag_at_kill} ms, +200 ms sampling)"

# --- fail back ---------------------------------------------------------------------------------
blog=$work/writer-b.log
# shellcheck disable=SC2046
"$drill" write $(socks b) --log "$blog" --rate "$writer_rate" --duration 2 --seed $((seed + 1)) --blocks "$span_blocks" >"$work/writer-b.out" 2>&1
ev b workload "$(cat "$work/writer-b.out")"
bed revive-site a
start_etcd a
start_daemon a
ev a restarted "comes up Secondary"
t_fb=$(date +%s%N)
wait_until "A resynced from B" 600 sh -c "for r in $(all_res | tr '\n' ' '); do [ \"\$('$drl' --config '$cfg' --node site-a status \$r --json | python3 -c 'import json,sys; r=json.load(sys.stdin)[\"resources\"][0]; print(r[\"disk\"], r[\"replication\"])')\" = 'UpToDate Established' ] || exit 1; done"
resynced=0
for r in $(all_res); do resynced=$((resynced + $(field a "$r" resync_bytes_received))); done
ev a resynced "$resynced bytes received for $nvol x $size ($(ms_since "$t_fb") ms)"
[ "$resynced" -le $((nvol * span_blocks * 4096)) ] || die "fail back resynced $resynced bytes: more than the $((nvol * span_blocks * 4096)) bytes the workloads wrote"
# planned switchover: writers stopped (done), B demoted once in sync, A promoted
for r in $(all_res); do on b secondary "$r" >/dev/null; done
for r in $(all_res); do on a primary "$r" >/dev/null; done
ev a switchover "B Secondary, A Primary"
# shellcheck disable=SC2046
"$drill" check --log "$blog" $(socks a) --no-loss --only-written >"$work/check-a.txt" || die "switchover lost writes: $(cat "$work/check-a.txt")"
ev a verified "every write acknowledged at B is at A: switchover RPO 0"
for ((v = 0; v < nvol; v++)); do
    cmp -s "$work/a/r$v.img" "$work/b/r$v.img" || die "r$v differs between A and B after the switchover"
done
ev - identical "A and B byte-identical"

# --- report -------------------------------------------------------------------------------------
{ head -1 "$events"; tail -n +2 "$events" | sort -t, -k1,1n; } >"$out/timeline.csv"
cp "$work/check-b.json" "$out/check-b.json"
detect_ms=$(( (t_detect - t_kill) / 1000000 ))
promote_ms=$(( (t_promote - t_kill) / 1000000 ))
read_ms=$(( (first_read_ns - t_kill) / 1000000 ))
{
    echo "# drl disaster drill"
    echo
    echo "seed $seed, link $rate, $nvol volumes of $size, writer $writer_rate writes/s, lease TTL ${ttl}s, $(date -u +%FT%TZ)"
    echo
    echo "| measure | value |"
    echo "|---|---:|"
    echo "| acknowledged writes before the kill | $acked |"
    echo "| lost acknowledged writes (RPO) | $lost ($lost_bytes bytes) |"
    echo "| RPO time span | ${rpo_s} s |"
    echo "| lag A reported at the kill | ${lag_at_kill} ms |"
    echo "| B's volumes a prefix of the log | $prefix (one cut for all: $group_prefix) |"
    echo "| kill -> site A suspected at B | ${detect_ms} ms |"
    echo "| kill -> promoted at B (lease, automatic) | ${promote_ms} ms |"
    echo "| kill -> first read at B (RTO, data) | ${read_ms} ms |"
    echo "| Cinder import + Heat stack | not driven by the drill yet |"
    echo "| fail back resync | $resynced bytes of $nvol x $size |"
    echo "| switchover RPO | 0 (checked) |"
    echo
    echo "## Timeline"
    echo
    echo "| t (ms) | site | event | detail |"
    echo "|---:|---|---|---|"
    tail -n +2 "$out/timeline.csv" | while IFS=, read -r t s e d; do echo "| $t | $s | $e | ${d//\"/} |"; done
} >"$out/timeline.md"
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    /usr/bin/python3 "$here/drill_plot.py" "$out/timeline.csv" "$out/timeline.png" || warn "plot failed"
else
    warn "no python3-matplotlib: no timeline.png (apt-get install python3-matplotlib)"
fi
cat "$out/timeline.md"
log "report in $out"
