#!/usr/bin/env bash
# drl's main job on one machine: two sites (network namespaces joined by a veth pair shaped with
# tc), one daemon per site, a volume replicated from site A to site B with protocol A, then a
# link cut and a resync of only what changed, an online verify that finds a corrupted block,
# a snapshot streamed to the vault and restored,
# and a fail over to B and a fail back to A. Every step prints what it checks.
#
#   scripts/demo.sh                 # 100 Mbit/s link; installs what it needs (Debian packages)
#   RATE=50mbit scripts/demo.sh     # another link rate
#   KEEP=1 scripts/demo.sh          # leave daemons and namespaces up at the end
#
# Needs root (network namespaces). Without root it runs both sites on loopback and says so.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need_pkgs qemu-io:qemu-utils nbdinfo:libnbd-bin nbdcopy:libnbd-bin ip:iproute2 tc:iproute2 python3:python3

rate=${RATE:-100mbit}
drl=$(drl_bin)
work=$(mktemp -d /tmp/drl-demo.XXXXXX)
netns=0
if [ "$(id -u)" = 0 ] && "$here/testbed.sh" up "$rate" >/dev/null 2>&1; then
    netns=1
    addr_a=198.18.0.1:7789 addr_b=198.18.0.2:7789
    log "two sites: netns drl-a (198.18.0.1) and drl-b (198.18.0.2), link shaped to $rate"
else
    addr_a=127.0.0.1:7789 addr_b=127.0.0.1:7790
    warn "not root or no network namespaces: both sites on loopback, unshaped"
fi
cfg=$work/drl.toml
pair_config "$work" "$addr_a" "$addr_b" 256MiB >"$cfg"
uri_a="nbd+unix:///?socket=$work/a/r0.nbd"
uri_b="nbd+unix:///?socket=$work/b/r0.nbd"
on() { local s=$1; shift; "$drl" --config "$cfg" --node "site-$s" "$@"; }
field() { site_field "$drl" "$cfg" "$1" "$2"; }
pids=()
start() { # site
    local s=$1 ns=
    [ $netns = 1 ] && ns=drl-$s
    start_site "$drl" "$cfg" "$s" "$ns"
    pids[$([ "$s" = a ] && echo 0 || echo 1)]=$SITE_PID
}
cleanup() {
    [ -n "${KEEP:-}" ] && { log "left running: config $cfg"; return; }
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ $netns = 1 ] && "$here/testbed.sh" down >/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
# wait_for WHAT SECONDS CMD... — poll CMD until it succeeds (only for "every write shipped and
# acked", which no state change announces; states are waited for with wait-connect / wait-sync).
wait_for() {
    local what=$1 secs=$2 i; shift 2
    for ((i = 0; i < secs * 4; i++)); do
        "$@" && { log "$what"; return 0; }
        sleep 0.25
    done
    die "timed out waiting: $what"
}
in_sync() { [ "$(field a disk)/$(field b disk)" = UpToDate/UpToDate ] && [ "$(field a out_of_sync_bytes)" = 0 ] && [ "$(field a send_queue_bytes)" = 0 ] && [ "$(field a replication)" = Established ]; }
same_disks() {
    local x y
    x=$(md5sum <"$work/a/r0.img"); y=$(md5sum <"$work/b/r0.img")
    [ "$x" = "$y" ] && log "disks identical (md5 ${x%% *})" || die "disks differ"
}

start a; start b
on a wait-connect r0 --timeout 30 >/dev/null || die "site A did not connect"
log "connected"
log "a new pair is Inconsistent on both sides; promoting site A starts the initial sync"
on a status
on a primary r0 --force
t0=$(date +%s.%N)
on b wait-sync r0 --timeout 120 >/dev/null || die "the initial sync did not finish"
wait_for "initial sync done" 120 in_sync
log "... in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s (zero blocks are not sent)"
log "initial sync brought $(field a resync_bytes_sent) of 268435456 bytes in sync; $(field a resync_zero_bytes) of them were zero ranges sent as headers only"

log "writing 32 MiB through NBD on site A (qemu-io)"
qemu-io -f raw -c 'write -P 0xa1 0 16M' -c 'write -P 0xb2 64M 16M' -c flush "$uri_a" | grep wrote | sed 's/^/    /'
wait_for "replicated" 60 in_sync
same_disks
on a status

if [ $netns = 1 ]; then
    log "cutting the link silently (nft drop: no carrier loss, packets just vanish)"
    # events2 (drbdsetup's format) says when A's connection leaves Connected: follow it from
    # the end of its initial dump ("exists -"), then cut.
    coproc EV { exec "$drl" --config "$cfg" --node site-a events2 r0; }
    while read -r line <&"${EV[0]}"; do [ "$line" = "exists -" ] && break; done
    "$here/testbed.sh" cut --silent >/dev/null
    t0=$(date +%s.%N)
    noticed=0
    while read -t 60 -r line <&"${EV[0]}"; do
        case $line in
            "change connection "*" connection:Connected"*) ;;
            "change connection "*" connection:"*) noticed=1; break ;;
        esac
    done
    kill "$EV_PID" 2>/dev/null || true
    [ $noticed = 1 ] || die "A did not notice the silent cut within 60 s"
    log "A noticed the silent cut ($line)"
    log "... after $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s (ping timeout)"
    log "writing 8 MiB on A while the link is down: A keeps serving, marks the blocks out of sync"
    qemu-io -f raw -c 'write -P 0xc3 128M 8M' -c flush "$uri_a" >/dev/null
    log "while cut: A's connection $(field a connection), out of sync $(field a out_of_sync_bytes) bytes"
    before=$(field a resync_bytes_sent)
    "$here/testbed.sh" restore >/dev/null
    on a wait-sync r0 --timeout 120 >/dev/null || die "no resync after the link came back"
    wait_for "link back, resynced" 120 in_sync
    log "resync moved $(( $(field a resync_bytes_sent) - before )) bytes for 8 MiB written while apart"
    same_disks
fi

log "bit rot on B: 3 bytes of its disk change behind drl's back; online verify from A finds the block"
printf 'rot' | dd of="$work/b/r0.img" bs=1 seek=$((100 * 1048576 + 7)) conv=notrunc status=none
on a verify r0
[ "$(field a out_of_sync_bytes)" = 4096 ] || die "verify should have marked exactly one 4 KiB block on A"
log "disconnect + connect resyncs the marked block from the Primary (as in DRBD)"
on a disconnect r0; on a connect r0
on a wait-sync r0 --timeout 60 >/dev/null || die "no resync after verify"
wait_for "resynced after verify" 60 in_sync
same_disks

log "snapshot s1 on A, streamed to the local vault, restored to a file"
on a snapshot create r0 s1
on a stream r0 s1 --to demo/r0
on a restore demo/r0/s1 --to "$work/restored.img"
cmp "$work/restored.img" "$work/a/r0.img" && log "restored snapshot equals the volume"

log "disaster: site A dies (kill -9); B is promoted with --force and takes writes"
kill -9 "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
on b primary r0 --force
qemu-io -f raw -c 'write -P 0xd4 200M 4M' -c flush "$uri_b" >/dev/null
log "fail back: A comes back as Secondary and receives only what changed"
start a
on a wait-sync r0 --timeout 120 >/dev/null || die "A did not get back in sync"
log "A back in sync"
log "A received $(field a resync_bytes_received) bytes of resync"
sleep 1
same_disks
on b status
log "done"
