#!/usr/bin/env bash
# The WAN benchmark (issue 4): drl's replication, classes and initial sync over a tc-shaped link
# between two network namespaces, and qemu-storage-daemon's blockdev-mirror over the same link.
#
#   scripts/bench-wan.sh                       # 500, 100 and 50 Mbit/s, about 20 minutes
#   QUICK=1 scripts/bench-wan.sh               # short windows, 128 MiB sync volumes
#   RATES="100mbit" REPEAT=3 scripts/bench-wan.sh
#
# At every rate (tbf on both ends of the veth, scripts/testbed.sh):
#  (a) goodput: fio writes random data through NBD on site A as fast as it can (on-congestion =
#      block); payload bytes received by B per second over the shaped rate. A full-size TCP
#      segment carries 1448 bytes of payload (MTU 1500 - 20 IP - 32 TCP with timestamps) in a
#      1514-byte frame as tbf counts it (14 bytes of Ethernet header), so the ceiling is
#      1448/1514 = 0.956; drl's 64-byte frame header per 256 KiB write costs 0.02% more.
#      Then compressible data (fio buffer_compress_percentage=50): the application's write rate
#      (what NBD accepted) over the shaped rate, and the bytes drl put on the wire per
#      application byte (the shaper's replication counter counts encoded frames).
#  (b) RPO: max-buffer 8 MiB; steady writes at 50% of the link, then a burst at 200% of the
#      link, for on-congestion = block and pull-ahead. Site A's lag_ms, send queue and
#      out-of-sync bytes sampled every 250 ms; fio's (nbd engine) completion latency.
#  (c) classes: drl's link-rate at 90% of the tbf rate, shares replication 50, resync 25,
#      snapshot 24, image 1. A resync (data written while disconnected), a snapshot stream to the
#      local vault (through the shaper, not over the veth) and unthrottled replication writes
#      compete; the shaper's per-class counters every 250 ms go to a CSV and a PNG.
#  (d) initial sync of a new pair (`drl primary r0 --force` until both sides are UpToDate)
#      against qemu-storage-daemon: blockdev-mirror sync=full copy-mode=background from site A
#      to an NBD export of a qemu-storage-daemon in site B, time to BLOCK_JOB_READY. Volumes:
#      SYNC_MIB of random data, and the same size half random, half zeros written as data (dd
#      from /dev/zero, fully allocated: no holes; both tools read the same bytes, from the disk:
#      the file is dropped from the page cache before each run). QEMU runs with its defaults,
#      and once more on the half-empty volume with detect-zeroes=on on its target.
#
# Output: bench-results/wan-STAMP.{md,csv}, -classes-RATE.{csv,png}. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || { echo "bench-wan: needs root (network namespaces, tc)" >&2; exit 2; }
need_pkgs fio:fio qemu-storage-daemon:qemu-utils ip:iproute2 tc:iproute2 python3:python3
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || {
    log "installing python3-matplotlib (for the plots)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-matplotlib >&2 || die "apt-get install python3-matplotlib failed"
}

RATES=${RATES:-500mbit 100mbit 50mbit}
PARTS=${PARTS:-goodput rpo classes sync} # a subset for a quick look at one part
REPEAT=${REPEAT:-1}
if [ -n "${QUICK:-}" ]; then
    SYNC_MIB=${SYNC_MIB:-128} T_GOOD=${T_GOOD:-3} T_STEADY=${T_STEADY:-4} T_BURST=${T_BURST:-2} T_CLASS=${T_CLASS:-5}
else
    SYNC_MIB=${SYNC_MIB:-512} T_GOOD=${T_GOOD:-8} T_STEADY=${T_STEADY:-8} T_BURST=${T_BURST:-4} T_CLASS=${T_CLASS:-12}
fi
export DRL_NS_A=${DRL_NS_A:-drl-bw-a} DRL_NS_B=${DRL_NS_B:-drl-bw-b}
export DRL_IF_A=${DRL_IF_A:-drl-bw-va} DRL_IF_B=${DRL_IF_B:-drl-bw-vb}
export DRL_ADDR_A=${DRL_ADDR_A:-198.18.0.1} DRL_ADDR_B=${DRL_ADDR_B:-198.18.0.2}
py=$here/bench_wan.py
drl=$(drl_bin)
top=$(repo_root)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
stem=$top/bench-results/wan-$stamp
mkdir -p "$top/bench-results"
w=$(mktemp -d /tmp/drl-bench-wan.XXXXXX)
raw=$w/raw.csv
echo "rate,part,metric,value" >"$raw"
log "uptime before: $(uptime)"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

PA= PB= QA= QB= SAMPLER=
cleanup() {
    for p in $SAMPLER $QA $QB $PA $PB; do stop_pid "$p" 3; done
    "$here/testbed.sh" down >/dev/null 2>&1 || true
    [ -n "${KEEP:-}" ] && log "kept $w" || rm -rf "$w"
}
on_exit cleanup

now() { date +%s.%N; }
want() { [[ " $PARTS " == *" $1 "* ]]; }
calc() { python3 -c "print($*)"; }
rec() { echo "$rate,$1,$2,$3" >>"$raw"; } # part metric value
on() { local s=$1; shift; "$drl" --config "$w/p/drl.toml" --node "site-$s" "$@"; }
st() { on "$1" status r0 --json | jq -r ".resources[0].$2"; }
poll() { # SECS WHAT CMD... — poll CMD every 100 ms
    local secs=$1 what=$2 i; shift 2
    for ((i = 0; i < secs * 10; i++)); do "$@" && return 0; sleep 0.1; done
    die "timed out after ${secs}s waiting for $what (logs in $w/p)"
}
connected() { [ "$(st a connection)" = Connected ]; }
synced() {
    on a status r0 --json | jq -e '.resources[0] | .disk == "UpToDate" and .replication == "Established"
        and .out_of_sync_bytes == 0 and .send_queue_bytes == 0' >/dev/null &&
        [ "$(st b disk)" = UpToDate ]
}

# cold FILE — write FILE back and drop it from the page cache (POSIX_FADV_DONTNEED on this file
# only, nothing global): both tools of (d) read their source from the disk, as a volume at rest.
cold() {
    sync "$1"
    dd if="$1" iflag=nocache count=0 status=none
}
# pair_up SIZE RESOURCE_KEYS MORE_TOML [A_DISK] — a new pair in $w/p, connected, not yet promoted.
pair_up() {
    pair_down
    rm -rf "$w/p"
    mkdir -p "$w/p/a" "$w/p/b"
    pair_config "$w/p" "$DRL_ADDR_A:7789" "$DRL_ADDR_B:7789" "$1" "$2" "$3" >"$w/p/drl.toml"
    [ -n "${4:-}" ] && { cp --sparse=never "$4" "$w/p/a/r0.img"; cold "$w/p/a/r0.img"; }
    start_site "$drl" "$w/p/drl.toml" a "$DRL_NS_A"; PA=$SITE_PID
    start_site "$drl" "$w/p/drl.toml" b "$DRL_NS_B"; PB=$SITE_PID
    poll 30 "the pair to connect" connected
}
pair_down() {
    [ -n "$PA" ] && stop_pid "$PA" 5
    [ -n "$PB" ] && stop_pid "$PB" 5
    PA= PB=
}
# An empty pair in sync (the initial sync of a sparse volume sends zero ranges only).
pair_synced() {
    pair_up "$@"
    on a primary r0 --force >/dev/null
    poll 120 "the initial sync" synced
}
sampler_start() { # OUT.csv [--classes]
    /usr/bin/python3 "$py" sample "$drl" "$w/p/drl.toml" "$@" &
    SAMPLER=$!
}
sampler_stop() { stop_pid "$SAMPLER" 5; SAMPLER=; }
uri_a() { echo "nbd+unix:///?socket=$w/p/a/r0.nbd"; }
fio_w() { # JSON OFFSET SIZE ARGS... — sequential writes through site A's NBD export
    local out=$1 off=$2 size=$3; shift 3
    fio --name=w --ioengine=nbd --uri="$(uri_a)" --rw=write --offset="$off" --size="$size" \
        --refill_buffers --output-format=json --output="$out" "$@" >/dev/null
}

# ---- (a) goodput ----------------------------------------------------------------------------
part_goodput() {
    local kind args t0 t1 r0 r1 n0 n1 g0 g1 tcp
    # The peer: one plain TCP stream over the same link, same window.
    ip netns exec "$DRL_NS_B" python3 "$py" tcp-sink "$DRL_ADDR_B" 5201 2 "$T_GOOD" >"$w/tcp.txt" &
    local sink=$!
    sleep 0.5
    ip netns exec "$DRL_NS_A" python3 "$py" tcp-source "$DRL_ADDR_B" 5201 $((T_GOOD + 4)) || true
    wait "$sink"
    tcp=$(cat "$w/tcp.txt")
    rec goodput tcp_fraction "$(calc "$tcp / $bps")"
    for kind in random zstd; do
        args=()
        [ "$kind" = zstd ] && args=(--buffer_compress_percentage=50 --buffer_compress_chunk=4096)
        fio_w "$w/good-$kind.json" 0 256m --bs=256k --iodepth=8 --time_based --runtime=$((T_GOOD + 3)) "${args[@]}" &
        local fpid=$!
        sleep 3 # the send buffer fills, TCP reaches its rate
        # Each counter is read between two clock readings; the midpoint is its time.
        t0=$(now); r0=$(st b received_bytes); t0=$(calc "($t0 + $(now)) / 2")
        n0=$(st a nbd.stats.bytes_written)
        g0=$(on a shaping show --json | jq '.classes[] | select(.class == "replication") | .granted_bytes')
        sleep "$T_GOOD"
        t1=$(now); r1=$(st b received_bytes); t1=$(calc "($t1 + $(now)) / 2")
        n1=$(st a nbd.stats.bytes_written)
        g1=$(on a shaping show --json | jq '.classes[] | select(.class == "replication") | .granted_bytes')
        wait "$fpid"
        if [ "$kind" = random ]; then
            rec goodput random_mbit "$(calc "($r1 - $r0) * 8 / ($t1 - $t0) / 1e6")"
            rec goodput random_fraction "$(calc "($r1 - $r0) * 8 / ($t1 - $t0) / $bps")"
            rec goodput random_vs_tcp "$(calc "($r1 - $r0) * 8 / ($t1 - $t0) / $tcp")"
        else
            rec goodput zstd_app_mbit "$(calc "($n1 - $n0) * 8 / ($t1 - $t0) / 1e6")"
            rec goodput zstd_app_fraction "$(calc "($n1 - $n0) * 8 / ($t1 - $t0) / $bps")"
            rec goodput zstd_wire_ratio "$(calc "($g1 - $g0) / max(1, $r1 - $r0)")"
        fi
        poll 120 "the queue to drain" synced
    done
}

# ---- (b) RPO and write latency --------------------------------------------------------------
part_rpo() { # MODE (the pair is up, in sync, with that on-congestion)
    local mode=$1 t0 t1 t2 lat rpo
    sampler_start "$w/rpo-$mode.csv"
    sleep 0.5
    t0=$(now)
    fio_w "$w/steady-$mode.json" 256m 256m --bs=64k --iodepth=4 --rate=$((bps / 8 / 2)) --time_based --runtime="$T_STEADY"
    t1=$(now)
    read -r lat <<<"$(python3 "$py" fio-lat "$w/steady-$mode.json")"
    rpo=$(python3 "$py" rpo "$w/rpo-$mode.csv" "$(calc "$t0 + 1")" "$t1")
    rec_rpo "rpo-$mode-steady" "$rpo" "$lat"
    poll 120 "the queue to drain" synced
    t0=$(now)
    fio_w "$w/burst-$mode.json" 0 256m --bs=256k --iodepth=8 --rate=$((bps / 8 * 2)) --time_based --runtime="$T_BURST"
    t1=$(now)
    poll 300 "the pair to catch up after the burst" synced
    t2=$(now)
    sleep 0.3
    sampler_stop
    lat=$(python3 "$py" fio-lat "$w/burst-$mode.json")
    rpo=$(python3 "$py" rpo "$w/rpo-$mode.csv" "$t0" "$t2")
    rec_rpo "rpo-$mode-burst" "$rpo" "$lat"
    rec "rpo-$mode-burst" catchup_s "$(calc "$t2 - $t1")"
}
rec_rpo() { # PART "lag_p50 lag_max behind_max ahead" "p50 p99 max MiB/s"
    local part=$1 a b c d p50 p99 mx mibs
    read -r a b c d <<<"$2"
    read -r p50 p99 mx mibs <<<"$3"
    rec "$part" lag_p50_ms "$a"; rec "$part" lag_max_ms "$b"
    rec "$part" behind_max_mib "$(calc "$c / 2**20")"; rec "$part" ahead_fraction "$d"
    rec "$part" clat_p50_us "$p50"; rec "$part" clat_p99_us "$p99"; rec "$part" app_mib_s "$mibs"
}

# ---- (c) class shares -----------------------------------------------------------------------
part_classes() {
    local link=$((bps * 9 / 10)) r_mib shaping out fpid spid res
    # Enough resync (and snapshot) data for T_CLASS seconds at a quarter of the link.
    r_mib=$(calc "min(224, max(16, int($link / 8 * 0.25 * $T_CLASS / 2**20)))")
    shaping=$(printf '[shaping]\nlink-rate = "%sbit"\n' "$link")
    for c in replication:50 resync:25 snapshot:24 image:1; do
        shaping+=$(printf '\n[shaping.class.%s]\nshare = %s\n' "${c%%:*}" "${c#*:}")
    done
    pair_synced 512MiB 'snapshot-space = "320MiB"' "$shaping"
    on a disconnect r0 >/dev/null
    poll 10 "StandAlone" sh -c "[ \"\$('$drl' --config '$w/p/drl.toml' --node site-a status r0 --json | jq -r '.resources[0].connection')\" = StandAlone ]"
    fio_w "$w/resync-data.json" 0 "${r_mib}m" --bs=1m --iodepth=4
    on a snapshot create r0 s1 >/dev/null
    out=$stem-classes-$rate.csv
    sampler_start "$out" --classes
    sleep 0.5
    on a stream r0 s1 --to bench/r0 --json >"$w/stream.json" 2>&1 &
    spid=$!
    on a connect r0 >/dev/null
    # Replication writes loop over 32 MiB: a write after the snapshot copies its chunk once
    # (copy-on-write), and a larger region made the application, not the shaper, the limit.
    fio_w "$w/classes-repl.json" 256m 32m --bs=256k --iodepth=8 --time_based --runtime=$((T_CLASS * 2)) &
    fpid=$!
    wait "$fpid" || true
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    sleep 0.3
    sampler_stop
    res=$(python3 "$py" shares "$out" "$(calc "$link / 8 * 50 / 100")" "$(calc "$link / 8")")
    local win rr rs rn rg tl dm
    read -r win rr rs rn rg tl dm <<<"$res"
    rec classes demand_mbit "$(calc "$dm * 8 / 1e6")"
    rec classes window_s "$win"
    rec classes replication_mbit "$(calc "$rr * 8 / 1e6")"
    rec classes resync_mbit "$(calc "$rs * 8 / 1e6")"
    rec classes snapshot_mbit "$(calc "$rn * 8 / 1e6")"
    rec classes replication_vs_guarantee "$rg"
    rec classes total_vs_link "$tl"
    pair_down
}

# ---- (d) initial sync: drl against qemu-storage-daemon's mirror -----------------------------
sync_drl() { # VOLUME_FILE — sets D_S (seconds) and D_Z (bytes sent as zero ranges)
    pair_up "${SYNC_MIB}MiB" "" "" "$1"
    on a primary r0 --force >/dev/null
    poll 900 "drl's initial sync" synced
    D_Z=$(st a resync_zero_bytes)
    D_S=$(python3 "$py" sync-time "$w/p/a.log")
    pair_down
    cmp "$1" "$w/p/b/r0.img" || die "drl: site B's disk differs from the volume after the initial sync"
}
sync_qemu() { # VOLUME_FILE [TARGET_OPTS] — sets Q_S (seconds to READY)
    local vol=$1 opts=${2:-}
    rm -f "$w/q-b.img" "$w/qmp.sock"
    cold "$vol"
    truncate -s "${SYNC_MIB}M" "$w/q-b.img"
    ip netns exec "$DRL_NS_B" qemu-storage-daemon \
        --blockdev "driver=file,node-name=disk,filename=$w/q-b.img" \
        --nbd-server "addr.type=inet,addr.host=$DRL_ADDR_B,addr.port=10809" \
        --export "type=nbd,id=exp,node-name=disk,name=vol,writable=on" 2>"$w/qsd-b.log" &
    QB=$!
    local i
    for ((i = 0; i < 100; i++)); do
        ip netns exec "$DRL_NS_A" bash -c "exec 3<>/dev/tcp/$DRL_ADDR_B/10809" 2>/dev/null && break
        sleep 0.1
    done
    ip netns exec "$DRL_NS_A" qemu-storage-daemon \
        --blockdev "driver=file,node-name=src,filename=$vol" \
        --blockdev "driver=nbd,node-name=tgt,server.type=inet,server.host=$DRL_ADDR_B,server.port=10809,export=vol$opts" \
        --chardev "socket,id=qmp,path=$w/qmp.sock,server=on,wait=off" --monitor chardev=qmp 2>"$w/qsd-a.log" &
    QA=$!
    wait_for_socket "$w/qmp.sock" 20 "$QA" || die "qemu-storage-daemon in site A did not start: $(cat "$w/qsd-a.log")"
    Q_S=$(python3 "$py" mirror "$w/qmp.sock") || die "qemu mirror failed: $(cat "$w/qsd-a.log" "$w/qsd-b.log")"
    stop_pid "$QA" 5; stop_pid "$QB" 5; QA= QB=
    cmp "$vol" "$w/q-b.img" || die "qemu: the target differs from the volume after the mirror"
}
part_sync() {
    local vol d q z dz=
    for vol in random half; do
        sync_drl "$w/vol-$vol.img"; d=$D_S z=$D_Z
        sync_qemu "$w/vol-$vol.img"; q=$Q_S
        rec "sync-$vol" drl_s "$d"
        rec "sync-$vol" qemu_s "$q"
        rec "sync-$vol" speedup "$(calc "$q / $d")"
        rec "sync-$vol" drl_zero_mib "$(calc "$z / 2**20")"
        if [ "$vol" = half ]; then
            sync_qemu "$w/vol-$vol.img" ",detect-zeroes=on"; dz=$Q_S
            rec "sync-$vol" qemu_dz_s "$dz"
            rec "sync-$vol" speedup_dz "$(calc "$dz / $d")"
        fi
        log "  $vol: drl $d s, qemu $q s${dz:+, qemu detect-zeroes $dz s}"
    done
}

# ---- run ------------------------------------------------------------------------------------
if want sync; then
    log "volumes for the initial sync: ${SYNC_MIB} MiB random, and half random + half zeros (as data)"
    half=$((SYNC_MIB / 2))
    dd if=/dev/urandom of="$w/vol-random.img" bs=1M count="$SYNC_MIB" status=none
    dd if=/dev/urandom of="$w/vol-half.img" bs=1M count="$half" status=none
    dd if=/dev/zero of="$w/vol-half.img" bs=1M seek="$half" count="$half" conv=notrunc status=none
    [ "$(du -m "$w/vol-half.img" | cut -f1)" -ge "$SYNC_MIB" ] || die "the half-empty volume has holes"
fi

for rate in $RATES; do
    bps=$(python3 -c "
import re, sys
m = re.fullmatch(r'(\d+(?:\.\d+)?)([kmg]?)bit', '$rate'.lower()) or sys.exit('bad rate $rate (use e.g. 100mbit)')
print(int(float(m.group(1)) * {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}[m.group(2)]))")
    "$here/testbed.sh" up "$rate" >/dev/null
    for ((rep = 1; rep <= REPEAT; rep++)); do
        log "== $rate, run $rep/$REPEAT"
        for mode in block pull-ahead; do
            want goodput && [ "$mode" = block ] || want rpo || continue
            log "  (a/b) on-congestion = $mode"
            pair_synced 512MiB "$(printf 'on-congestion = "%s"\nmax-buffer = "8MiB"' "$mode")" ""
            if want goodput && [ "$mode" = block ]; then part_goodput; fi
            if want rpo; then part_rpo "$mode"; fi
            pair_down
        done
        if want classes; then
            log "  (c) classes"
            part_classes
        fi
        if want sync; then
            log "  (d) initial sync, drl and qemu mirror"
            part_sync
        fi
    done
    "$here/testbed.sh" down >/dev/null
done

cp "$raw" "$stem-raw.csv"
python3 - "$w/meta.json" <<PY
import json, subprocess, sys
meta = {
    "date": "$stamp",
    "commit": subprocess.run(["git", "-C", "$top", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "rates": "$RATES", "repeat (medians)": $REPEAT, "quick": "${QUICK:-no}",
    "windows (s)": "goodput $T_GOOD, steady $T_STEADY, burst $T_BURST, classes ~$T_CLASS", "sync volume": "$SYNC_MIB MiB",
    "load before": "$load_before", "load after": open("/proc/loadavg").read().split()[:3],
    "qemu": subprocess.run(["qemu-storage-daemon", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
    "command": "RATES='$RATES' REPEAT=$REPEAT ${QUICK:+QUICK=1 }scripts/bench-wan.sh",
    "notes": [
        "Goodput is payload bytes received by B per second over the tbf rate; the TCP/IP ceiling is 1448/1514 = 0.956 (MTU 1500, TCP timestamps, tbf counts the 14-byte Ethernet header).",
        "RPO: lag is the age of the oldest write not yet acknowledged by B (status lag_ms); 'not yet at B' is the send queue plus out-of-sync bytes (Ahead marks the bitmap instead of queueing). max-buffer 8 MiB.",
        "Classes: drl's own link-rate is 90% of the tbf rate, so drl's shaper (not tbf) is the bottleneck; rates are the shaper's granted bytes (encoded frames; snapshot chunks to the local vault).",
        "Initial sync: drl from 'primary --force' until both sides are UpToDate and nothing is queued; qemu from blockdev-mirror to BLOCK_JOB_READY. Zeros of the half-empty volume are written as data (no holes), the same file for both tools. Both targets are compared with cmp afterwards.",
    ],
}
json.dump(meta, open(sys.argv[1], "w"))
PY
/usr/bin/python3 "$py" report "$raw" "$stem" "$w/meta.json"
log "uptime after: $(uptime)"
log "results: $stem.md, $stem.csv, $stem-classes-*.png"
