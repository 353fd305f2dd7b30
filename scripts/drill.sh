#!/usr/bin/env bash
# The disaster drill: one command runs a whole disaster on this machine and reports RPO, RTO
# and a timeline.
#
#   scripts/drill.sh [--rate 100mbit] [--volume-size 256MiB] [--volumes 2] [--seed N]
#                    [--writer-rate 1500] [--out DIR] [--keep] [--short]
#
# What it does, each step timed (timeline.csv / timeline.md / timeline.png in --out):
#  1. sites as network namespaces joined by a veth pair shaped with tc (scripts/testbed.sh),
#     one drl daemon per site, --volumes replicated resources (A -> B), initial sync;
#  2. a workload at A (drl-drill write): dependent 4 KiB writes alternating over the volumes,
#     every write logged before it is sent and when it is acknowledged; A's status (lag,
#     send queue) sampled every 100 ms;
#  3. site A killed at a random moment (seeded): every process of the site SIGKILLed, its
#     link down;
#  4. detection and promotion at B;
#  5. B's volumes read through NBD and held against the writer's log (drl-drill check): each
#     volume a prefix of the writes, nothing damaged; RPO = the acknowledged writes missing
#     (count, bytes, time span) against the lag A reported at the kill;
#  6. fail back: A returns as Secondary, resyncs only what changed (bytes against the volume
#     size), a workload at B meanwhile, then a planned switchover back to A with RPO 0 (every
#     write acknowledged at B is at A, the disks identical);
#  7. the summary table, the timeline (markdown + CSV) and a plot.
#
# Until site-failure detection and the recovery orchestrator are in (issues "Site-failure
# detection" and "Recovery"), step 4 is: B notices the link loss, then `drl primary --force` at
# B, stated as such in the report ("manual"); no step claims a part that did not run.
#
# Exits non-zero if a check fails. Needs root (network namespaces). Installs what it needs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

rate=100mbit size=256MiB nvol=2 seed=$RANDOM writer_rate=1500 out="" keep=0 short=0
while [ $# -gt 0 ]; do
    case "$1" in
    --rate) rate=$2; shift 2 ;;
    --volume-size) size=$2; shift 2 ;;
    --volumes) nvol=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --writer-rate) writer_rate=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --short) short=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "the drill needs root: its sites are network namespaces"
[[ $nvol =~ ^[1-9][0-9]*$ ]] && [ "$nvol" -le 8 ] || die "--volumes must be 1..8"
need_pkgs ip:iproute2 tc:iproute2 python3:python3

drl=$(drl_bin)
drill=$(dirname "$drl")/drl-drill
if [ -z "${DRL_BIN:-}" ]; then
    (cd "$(repo_root)" && cargo build --release --quiet --bin drl-drill) >&2 || die "cargo build of drl-drill failed"
fi
[ -x "$drill" ] || die "no drl-drill next to $drl (set DRL_BIN to a build that has both)"

work=$(mktemp -d /tmp/drl-drill.XXXXXX)
[ -n "$out" ] || out=$(repo_root)/bench-results/drill-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
export DRL_NS_A=drl-drl-a DRL_NS_B=drl-drl-b DRL_IF_A=drl-dva DRL_IF_B=drl-dvb \
    DRL_ADDR_A=198.18.9.1 DRL_ADDR_B=198.18.9.2
RANDOM=$seed

t0=$(date +%s%N)
events=$work/timeline.csv
echo "t_ms,site,event,detail" >"$events"
ev() { # SITE EVENT DETAIL — one timeline row, relative to the drill's start
    local t=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "$t,$1,$2,\"$3\"" >>"$events"
    log "[$((t / 1000)).$(printf %03d $((t % 1000)))s] $1: $2 ${3:+($3)}"
}
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# --- the sites -------------------------------------------------------------------------------
cfg=$work/drl.toml
{
    for s in a b; do printf '[[node]]\nname = "site-%s"\ncontrol-socket = "%s/site-%s.sock"\n\n' "$s" "$work" "$s"; done
    for ((v = 0; v < nvol; v++)); do
        printf '[[resource]]\nname = "r%d"\nsize = "%s"\nsecret = "drill-secret"\n' "$v" "$size"
        for s in a b; do
            addr=$([ $s = a ] && echo "$DRL_ADDR_A" || echo "$DRL_ADDR_B")
            printf '[resource.on.site-%s]\naddress = "%s:%d"\n' "$s" "$addr" $((7800 + v))
            printf 'disk = "%s/%s/r%d.img"\nmeta = "%s/%s/r%d.meta"\nnbd = "%s/%s/r%d.nbd"\n' \
                "$work" $s $v "$work" $s $v "$work" $s $v
        done
        echo
    done
    printf '[stream]\nvault-dir = "%s/vault"\n' "$work"
} >"$cfg"
mkdir -p "$work/a" "$work/b"

declare -A pid
on() { local s=$1; shift; "$drl" --config "$cfg" --node "site-$s" "$@"; }
start_daemon() { # SITE
    local s=$1 ns
    ns=$([ "$s" = a ] && echo "$DRL_NS_A" || echo "$DRL_NS_B")
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
disconnected_at_b() {
    local r
    for r in $(all_res); do [ "$(field b "$r" connection)" != Connected ] || return 1; done
}

cleanup() {
    local st=$?
    [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null
    if [ $keep = 1 ]; then
        log "left running (--keep): config $cfg, logs in $work"
        return
    fi
    for s in a b; do [ -n "${pid[$s]:-}" ] && stop_pid "${pid[$s]}" 5; done
    "$here/testbed.sh" down >/dev/null 2>&1 || true
    cp "$work"/*.log "$out/" 2>/dev/null || true
    rm -rf "$work"
    exit $st
}
trap cleanup EXIT

"$here/testbed.sh" up "$rate" >/dev/null || die "testbed up failed"
ev - sites-up "netns $DRL_NS_A, $DRL_NS_B; link $rate"
start_daemon a
start_daemon b
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
ip netns exec "$DRL_NS_A" "$drill" write $(socks a) --log "$wlog" --rate "$writer_rate" --seed "$seed" --blocks "$span_blocks" \
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
kill -9 "${pid[a]}" "$writer" 2>/dev/null || true
ip netns pids "$DRL_NS_A" | xargs -r kill -9 2>/dev/null || true
ip -n "$DRL_NS_A" link set "$DRL_IF_A" down
kill "$sampler" 2>/dev/null; sampler=""
wait "${pid[a]}" 2>/dev/null || true; unset 'pid[a]'
wait "$writer" 2>/dev/null || true
ev a killed "after ${run_ms} ms of workload; processes SIGKILLed, link down"
lag_at_kill=$(awk 'BEGIN{m=0} {if ($3>m) m=$3} END{print m}' <(tail -n $((nvol * 3)) "$work/lag-a.txt"))
ev a lag-at-kill "${lag_at_kill} ms (A's last samples)"

# --- detection, promotion, recovery -----------------------------------------------------------
wait_until "B notices A is gone" 60 disconnected_at_b
t_detect=$(date +%s%N)
ev b detected "link loss seen by replication ($(( (t_detect - t_kill) / 1000000 )) ms after the kill)"
for r in $(all_res); do on b primary "$r" --force >/dev/null; done
t_promote=$(date +%s%N)
ev b promoted "manual: drl primary --force (site-failure detection not built yet)"

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
ev b first-read "volumes readable at B"
[ "$prefix" = True ] || die "B's volumes are NOT a prefix of the acknowledged writes (see $work/check-b.json)"
ev b verified "prefix of the writer's log: lost $lost of $acked acknowledged writes ($lost_bytes bytes, ${rpo_s} s)"
rpo_ok=$(python3 -c "print($rpo_s * 1000 <= $lag_at_kill + 200)")
[ "$rpo_ok" = True ] || die "RPO ${rpo_s}s exceeds the lag A reported at the kill (${lag_at_kill} ms, +200 ms sampling)"

# --- fail back ---------------------------------------------------------------------------------
blog=$work/writer-b.log
# shellcheck disable=SC2046
"$drill" write $(socks b) --log "$blog" --rate "$writer_rate" --duration 2 --seed $((seed + 1)) --blocks "$span_blocks" >"$work/writer-b.out" 2>&1
ev b workload "$(cat "$work/writer-b.out")"
ip -n "$DRL_NS_A" link set "$DRL_IF_A" up
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
cp "$events" "$out/timeline.csv"
cp "$work/check-b.json" "$out/check-b.json"
detect_ms=$(( (t_detect - t_kill) / 1000000 ))
promote_ms=$(( (t_promote - t_kill) / 1000000 ))
read_ms=$(( (first_read_ns - t_kill) / 1000000 ))
{
    echo "# drl disaster drill"
    echo
    echo "seed $seed, link $rate, $nvol volumes of $size, writer $writer_rate writes/s, $(date -u +%FT%TZ)"
    echo
    echo "| measure | value |"
    echo "|---|---:|"
    echo "| acknowledged writes before the kill | $acked |"
    echo "| lost acknowledged writes (RPO) | $lost ($lost_bytes bytes) |"
    echo "| RPO time span | ${rpo_s} s |"
    echo "| lag A reported at the kill | ${lag_at_kill} ms |"
    echo "| B's volumes a prefix of the log | $prefix (one cut for all: $group_prefix) |"
    echo "| kill -> detected | ${detect_ms} ms |"
    echo "| kill -> promoted (manual) | ${promote_ms} ms |"
    echo "| kill -> first read at B (RTO, data) | ${read_ms} ms |"
    echo "| fail back resync | $resynced bytes of $nvol x $size |"
    echo "| switchover RPO | 0 (checked) |"
    echo
    echo "## Timeline"
    echo
    echo "| t (ms) | site | event | detail |"
    echo "|---:|---|---|---|"
    tail -n +2 "$events" | while IFS=, read -r t s e d; do echo "| $t | $s | $e | ${d//\"/} |"; done
} >"$out/timeline.md"
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    /usr/bin/python3 "$here/drill_plot.py" "$out/timeline.csv" "$out/timeline.png" || warn "plot failed"
else
    warn "no python3-matplotlib: no timeline.png (apt-get install python3-matplotlib)"
fi
cat "$out/timeline.md"
log "report in $out"
