#!/usr/bin/env bash
# Where one NBD connection's time goes at queue depth 32: trace the disk (block tracepoints),
# the server's replies and submissions and the client's requests (system calls) and the
# scheduler, for a fraction of a second in the middle of a 4 KiB random-write fio run, and print
# one row per setup (scripts/nbd_cycle.py says what each column means):
#
#   drl     fio's nbd engine -> drl daemon (unreplicated) -> the file, O_DIRECT through io_uring
#   qsd     fio's nbd engine -> qemu-storage-daemon (aio=io_uring, cache.direct=on) -> the file
#   direct  fio's io_uring engine straight on the file (no NBD: the disk's own pace)
#
# What it answers: whether the disk is kept busy. A disk that completes a whole queue's writes
# in one burst (as this VM's virtio disk does) makes one connection run in lock-step: the disk
# idles while the server replies, the client sends the next 32 requests one by one, and the
# server reads and submits them. The table splits that round trip into the server's and the
# client's parts.
#
# Usage: scripts/trace-nbd-cycle.sh [--setups "drl qsd direct"] [--qd 32] [--record-s 0.5]
# Environment: DRL_BIN (else cargo build --release), BENCH_DIR (default <repo>/target; the file
# must allow O_DIRECT), OUT_DIR (default <repo>/bench-results), KEEP=1 keeps the traces.
# Writes OUT_DIR/nbd-cycle-<date>.md. Needs root (perf record -a).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

setups="drl qsd direct" qd=32 record_s=0.5
while [ $# -gt 0 ]; do
    case $1 in
    --setups) setups=$2; shift 2 ;;
    --qd) qd=$2; shift 2 ;;
    --record-s) record_s=$2; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
need_pkgs fio:fio perf:linux-perf nbdinfo:libnbd-bin
case " $setups " in *" qsd "*) need_cmd qemu-storage-daemon qemu-utils ;; esac
root=$(repo_root)
out_dir=${OUT_DIR:-$root/bench-results}
mkdir -p "$out_dir" "${BENCH_DIR:-$root/target}"
dir=$(mktemp -d "${BENCH_DIR:-$root/target}/trace-nbd.XXXXXX")
[ "${KEEP:-0}" = 1 ] || on_exit "rm -rf '$dir'"
size_bytes=$((256 << 20))
make_backing_file "$dir/r0.img" "$size_bytes" full
drl=""
case " $setups " in *" drl "*) drl=$(drl_bin) ;; esac
# Run fio long enough to ramp up, record in the middle.
fio_s=$(python3 -c "import math; print(math.ceil($record_s) + 4)")

tids_of() { # pid... -> comma-separated thread ids
    local p
    for p in "$@"; do ls "/proc/$p/task" 2>/dev/null; done | paste -sd, -
}

trace_one() { # setup server_pid fio_args...
    local setup=$1 server=$2 fio_pid server_tids client_tids
    shift 2
    fio --name=cycle "$@" --rw=randwrite --bs=4k --iodepth="$qd" --size=256M --time_based \
        --runtime="$fio_s" --randrepeat=0 --norandommap --output-format=json \
        --output="$dir/$setup.fio.json" >"$dir/$setup.fio.log" 2>&1 &
    fio_pid=$!
    sleep 2 # ramp: the connection and the disk reach their steady pace
    client_tids=$(tids_of $(pgrep -x fio || true))
    if [ "$server" = fio ]; then server_tids=$client_tids client_tids=""; else server_tids=$(tids_of "$server"); fi
    perf record -q -a -o "$dir/$setup.data" \
        -e block:block_rq_issue -e block:block_rq_complete -e sched:sched_switch \
        -e syscalls:sys_enter_sendto -e syscalls:sys_enter_sendmsg -e syscalls:sys_enter_write \
        -e syscalls:sys_enter_writev -e syscalls:sys_enter_io_uring_enter \
        -e syscalls:sys_enter_io_submit -- sleep "$record_s" >/dev/null 2>&1 ||
        die "perf record failed (root and tracepoints are needed)"
    wait "$fio_pid" || die "fio failed on $setup: $(tail -n 5 "$dir/$setup.fio.log" | tr '\n' ' ')"
    perf script -i "$dir/$setup.data" >"$dir/$setup.txt" 2>/dev/null
    python3 "$here/nbd_cycle.py" "$setup" "$dir/$setup.txt" "$server_tids" "$client_tids" >"$dir/$setup.json"
    python3 - "$dir/$setup.json" "$dir/$setup.fio.json" <<'EOF'
import json, sys
row = json.load(open(sys.argv[1])); w = json.load(open(sys.argv[2]))["jobs"][0]["write"]
row["fio_iops"] = round(w["iops"]); json.dump(row, open(sys.argv[1], "w"))
EOF
    log "$setup: $(cat "$dir/$setup.json")"
}

for setup in $setups; do
    case $setup in
    drl)
        node_config "$dir" cycle "$size_bytes" >"$dir/drl.toml"
        start_bg "drl daemon" "$dir/drl.log" "$drl" daemon --config "$dir/drl.toml" --node cycle
        wait_for_socket "$dir/r0.nbd" 30 "$BG_PID" || die "drl did not start: $(tail -n 5 "$dir/drl.log")"
        trace_one drl "$BG_PID" --ioengine=nbd --uri="nbd+unix:///r0?socket=$dir/r0.nbd"
        stop_pid "$BG_PID"
        ;;
    qsd)
        start_bg "qemu-storage-daemon" "$dir/qsd.log" qemu-storage-daemon \
            --blockdev "driver=file,node-name=file0,filename=$dir/r0.img,cache.direct=on,aio=io_uring" \
            --blockdev driver=raw,node-name=disk0,file=file0 \
            --nbd-server "addr.type=unix,addr.path=$dir/qsd.nbd" \
            --export type=nbd,id=e0,node-name=disk0,name=disk0,writable=on
        wait_for_socket "$dir/qsd.nbd" 30 "$BG_PID" || die "qsd did not start: $(tail -n 5 "$dir/qsd.log")"
        trace_one qsd "$BG_PID" --ioengine=nbd --uri="nbd+unix:///disk0?socket=$dir/qsd.nbd"
        stop_pid "$BG_PID"
        ;;
    direct)
        trace_one direct fio --ioengine=io_uring --direct=1 --filename="$dir/r0.img"
        ;;
    *) die "unknown setup $setup (drl, qsd, direct)" ;;
    esac
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
report=$out_dir/nbd-cycle-$stamp.md
{
    echo "# One NBD connection at queue depth $qd: where the time goes"
    echo
    echo "- date (UTC): $stamp; host: $(nproc) CPUs, kernel $(uname -r); load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- 4 KiB random writes, 256 MiB file written in full first, O_DIRECT; traced ${record_s}s in the middle of a ${fio_s}s fio run"
    echo "- re-run: \`scripts/trace-nbd-cycle.sh --setups \"$setups\" --qd $qd --record-s $record_s\`"
    echo
    python3 "$here/nbd_cycle.py" --table $(for s in $setups; do echo "$dir/$s.json"; done)
    echo
    echo "fio IOPS over the whole run: $(for s in $setups; do python3 -c "import json; r=json.load(open('$dir/$s.json')); print(f\"{r['setup']} {r['fio_iops']:,}\")"; done | paste -sd';' - | sed 's/;/; /g')."
    echo "The traced window runs slower than fio's figure (tracing costs CPU). Steps: 'disk done -> reply' from the last completion of a burst to the server's next send; 'reply -> client resent' to the client's last request before the server's next submission; 'client's last send -> submit' to that submission. CPU per write is on-CPU time from sched_switch over the disk's writes in the window. In the direct row the client is the server (fio submits to the disk itself)."
} >"$report"
cat "$report"
log "wrote $report"
