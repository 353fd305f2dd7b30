#!/usr/bin/env bash
# NBD write benchmark: fio --ioengine=nbd against drl (unreplicated), drl replicating (a Primary
# shipping every write to a Secondary daemon over loopback TCP, protocol A) and
# qemu-storage-daemon (qsd) exporting the same kind of file, in one run. Rows: 4 KiB random
# writes at queue depth 32 and 1, 1 MiB sequential writes at queue depth 16. Prints IOPS, MiB/s
# and latency side by side with the ratios replicated/unreplicated and drl/qsd, the replication
# lag sampled during each replicated run (max and median of `lag_ms` and `send_queue_bytes`,
# every 200 ms), how long the Secondary took to catch up after the run, and whether the
# Secondary ended byte-identical to the Primary (cmp of the two backing files, daemons stopped).
# Writes bench-results/nbd-<date>.{md,csv}.
# Goals: drl at least as fast as qemu-storage-daemon on every row; replication costs < 10 %.
#
# The null columns are the transport ceiling: drl's own NBD server over its null volume
# (`drl serve-null`: writes discarded, reads zeroes) and qsd's NBD server over its `null-co`
# driver. What drl's real write path reaches as a fraction of them is what the disk path costs.
#
# --cpu adds the daemons' CPU per I/O for every column: utime+stime of each daemon from
# /proc/PID/stat over fio's measured seconds (bench_cpu.py samples every 50 ms and cuts the
# window at fio's end) divided by fio's I/Os; a replicated column shows the Primary and the
# Secondary separately. On a 2-core host shared with other work this is the number to compare:
# throughput is whatever CPU is left, CPU per I/O barely depends on it.
#
# One host: both daemons of a pair share the CPUs, and with --repl disk the Secondary writes
# every byte again on the same disk, so the replicated column pays the Secondary's disk work
# too. --repl shm puts the Secondary's backing file on tmpfs (/dev/shm): memory, so that column
# shows the replication cost without the Secondary's disk contention. Kernels before 6.6 refuse
# O_DIRECT on tmpfs and drl falls back to buffered I/O (it logs direct_io=false; the table
# says which it was). Neither file is what a production Secondary writes to: io_uring cannot
# start a write on tmpfs without blocking, and on ext4 not into the unwritten extents the
# initial sync's zero ranges (fallocate ZERO_RANGE) leave, so it hands those writes to its
# io-wq worker threads, which are the daemon's and count in its CPU. --repl loop puts the
# Secondary on a block device, as Cinder's LVM backend does: a loop device (direct I/O) over a
# file on the same disk; the loop driver's own work runs in kernel threads, as a real
# device's runs in its hardware. It needs root and the loop driver (losetup).
#
# Usage: scripts/bench-nbd.sh [--only drl|qsd] [--runtime S] [--repeat N] [--size SIZE]
#                             [--repl disk,shm,loop|...|none] [--drl-config FILE --drl-node NAME]
#                             [--aa] [--no-null] [--cpu] [--keep] [--disk file|ram]
#   --repl LIST  replicated columns: disk (the Secondary's backing file next to the Primary's),
#                shm (the Secondary's backing file on tmpfs, SHM_DIR), loop (the Secondary on a
#                loop block device over a file next to the Primary's); default disk,shm. Each is a fresh
#                pair on zeroed files: `drl primary r0 --force` and the initial sync (zero
#                ranges, headers only) finish before anything is measured.
#   --disk ram   drl's and qsd's unreplicated disks are loop block devices over tmpfs files
#                (SHM_DIR; one each, attached without direct I/O, which tmpfs lacks), opened by
#                both with O_DIRECT (qsd: host_device, cache.direct=on): a disk that completes
#                each request at once, in the kernel, so the rows measure the servers and not
#                this VM's disk. The loop driver's work runs in kernel threads, outside the
#                daemons' CPU. The replicated pairs keep their files. Default: file.
#   --no-null    skip the transport ceiling columns (drl null: `drl serve-null`; qsd null-co)
#   --counts     also count each daemon's system calls (all, and the I/O ones by name), context
#                switches and page faults per I/O (perf stat over fio's measured seconds): what
#                a write costs in kernel crossings and wake-ups, which barely depends on the load
#   --cpu        report daemon CPU microseconds per I/O of every column (Primary and Secondary
#                of a replicated one), from /proc over the fio run
#   --aa   A/A calibration: a second qemu-storage-daemon takes drl's column, so the ratios show
#          how noisy this machine is (they should all be near 1.00). Needs no drl.
# Environment (flags win):
#   RUNTIME=20        seconds per fio run (time based)      RAMP=2   fio ramp_time seconds
#   REPEAT=1          runs per row and server (the median is reported)
#   SIZE=1GiB         size of each backing file (all preallocated and written the same way)
#   PREALLOC=full     full: fallocate + write zeros (no unwritten extents); falloc: fallocate only
#   NULL=1            0: as --no-null              CPU=0   1: as --cpu      DISK=file  as --disk
#   ROWS="randwrite-4k-qd32 randwrite-4k-qd1 write-1m-qd16"   the rows to run (a subset for A/B)
#   REPL=disk,shm     as --repl                SHM_DIR=/dev/shm   where --repl shm puts its file
#   DRL_BIN=path      use this drl binary instead of `cargo build --release`
#   DRL_EXPORT=name   NBD export name of drl (default: the only export listed, else r0)
#   DRL_WORKERS=N     the drl daemons' and serve-null's runtime worker threads ([[node]]
#                     worker-threads, serve-null --worker-threads; unset: the daemon's default)
#   DRL_AFTER_START=cmd   run after drl is up (e.g. to make r0 Primary), with $DRL_BIN/$DRL_CONFIG set
#   BENCH_DIR=dir     parent of the temp dir (default: <repo>/target; must allow O_DIRECT, so no tmpfs)
#   OUT_DIR=dir       where results go (default: <repo>/bench-results)
#   KEEP=1            keep the temp dir (backing files, logs, raw fio JSON, lag samples)
#   PERF_RECORD=col   `perf record -g` every daemon of that column (drl, drlnull, drlrep, drlshm, drlloop,
#                     qsd, qsdnull) over its first 4 KiB QD 32 run; the reports (by symbol,
#                     self time) go to OUT_DIR/nbd-<date>-perf-<col>-<daemon|primary|secondary>.txt
#   QSD_AIO_MODES="io_uring native threads"   aio modes qsd tries, in order (the first it accepts wins)
#
# Without --drl-config the script writes its own one-node, unreplicated drl config into the temp
# dir (resource r0 on node "bench", NBD on a Unix socket). With --drl-config FILE --drl-node
# NAME, the NBD socket of the first resource on that node is read from FILE (the replicated
# columns are still the script's own pairs).

set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

only=""
runtime=${RUNTIME:-20}
ramp=${RAMP:-2}
repeat=${REPEAT:-1}
size=${SIZE:-1GiB}
prealloc=${PREALLOC:-full}
drl_config=""
drl_node="bench"
keep=${KEEP:-0}
aa=0
repl=${REPL:-disk,shm}
shm_dir=${SHM_DIR:-/dev/shm}
null=${NULL:-1}
cpu=${CPU:-0}
counts=${COUNTS:-0}
disk=${DISK:-file}

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
while [ $# -gt 0 ]; do
    case $1 in
    --only) only=${2:?--only needs drl or qsd}; shift 2 ;;
    --runtime) runtime=${2:?}; shift 2 ;;
    --repeat) repeat=${2:?}; shift 2 ;;
    --size) size=${2:?}; shift 2 ;;
    --drl-config) drl_config=${2:?}; shift 2 ;;
    --drl-node) drl_node=${2:?}; shift 2 ;;
    --repl) repl=${2:?--repl needs a list}; shift 2 ;;
    --keep) keep=1; shift ;;
    --aa) aa=1; shift ;;
    --no-null) null=0; shift ;;
    --disk) disk=${2:?--disk needs file or ram}; shift 2 ;;
    --cpu) cpu=1; shift ;;
    --counts) counts=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
done
case $only in "" | drl | qsd) ;; *) die "--only takes drl or qsd, not $only" ;; esac
case $disk in file | ram) ;; *) die "--disk takes file or ram, not $disk" ;; esac
[[ $runtime =~ ^[0-9]+$ && $runtime -gt 0 ]] || die "runtime must be a positive number of seconds: $runtime"
[[ $repeat =~ ^[0-9]+$ && $repeat -gt 0 ]] || die "repeat must be a positive count: $repeat"
want_drl=1 want_qsd=1
[ "$aa" = 1 ] && [ -n "$only" ] && die "--aa compares qsd with itself; it does not combine with --only"
[ "$only" = qsd ] && want_drl=0
[ "$only" = drl ] && want_qsd=0
repl_kinds=()
if [ "$repl" != none ] && [ $want_drl = 1 ] && [ "$aa" = 0 ]; then
    IFS=, read -r -a repl_kinds <<<"$repl"
    for k in "${repl_kinds[@]}"; do
        case $k in disk | shm | loop) ;; *) die "--repl takes a list of disk, shm, loop (e.g. disk,shm) or none, not $k" ;; esac
    done
fi

need_cmd fio fio
need_cmd nbdinfo libnbd-bin
need_cmd python3 python3
[ $want_qsd = 1 ] && need_cmd qemu-storage-daemon qemu-utils
[ -n "$drl_config" ] && [ "$aa" = 1 ] && die "--aa does not use a drl config"
need_cmd fallocate util-linux
[ -n "${PERF_RECORD:-}" ] && need_cmd perf linux-perf
count_events=raw_syscalls:sys_enter,context-switches,page-faults
for sc in io_uring_enter futex epoll_wait read readv recvfrom recvmsg write writev sendto sendmsg; do
    count_events+=",syscalls:sys_enter_$sc"
done
if [ "$counts" = 1 ]; then
    need_cmd perf linux-perf
    perf stat -e "$count_events" -- true >/dev/null 2>&1 ||
        die "--counts: perf stat cannot count $count_events here (needs root and tracefs)"
fi
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (fio --enghelp=nbd)"

root=$(repo_root)
size_bytes=$(parse_size_bytes "$size") || die "cannot parse size $size"
[ $((size_bytes % 1048576)) = 0 ] && [ "$size_bytes" -gt 0 ] || die "size must be a positive multiple of 1 MiB: $size"

bench_parent=${BENCH_DIR:-$root/target}
mkdir -p "$bench_parent"
dir=$(mktemp -d "$bench_parent/bench-nbd.XXXXXX")
if [ "$keep" = 1 ]; then
    on_exit "log 'kept $dir'"
else
    on_exit "rm -rf '$dir'"
fi
mkdir -p "$dir/raw"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "work dir $dir ($(stat -f -c %T "$dir"), same filesystem for both servers)"

make_backing() { make_backing_file "$1" "$size_bytes" "$prealloc"; }
# make_server_disk PATH: the unreplicated drl's or qsd's disk at PATH: a backing file, or with
# --disk ram a link to a loop device over a tmpfs file.
make_server_disk() {
    local f dev
    if [ "$disk" != ram ]; then
        make_backing "$1"
        return
    fi
    [ -d "$shm_dir" ] || die "--disk ram: SHM_DIR=$shm_dir is not a directory"
    need_cmd losetup mount
    f=$(mktemp "$shm_dir/drl-bench-nbd-ram.XXXXXX")
    make_backing "$f"
    dev=$(losetup --find --show "$f" 2>"$dir/losetup.err") ||
        die "--disk ram needs a loop device (root and the loop driver): losetup: $(cat "$dir/losetup.err")"
    on_exit "losetup -d '$dev'; rm -f '$f'"
    ln -sfn "$dev" "$1"
    log "$(basename "$1"): $dev over $f (tmpfs)"
}

# ---- qemu-storage-daemon ------------------------------------------------------------------
# start_qsd NAME: a qsd exporting $dir/NAME.img on $dir/NAME.nbd; sets started_uri, qsd_aio.
qsd_uri="" qsd_aio="" started_uri=""
start_qsd() {
    local name=$1 img=$dir/$1.img sock=$dir/$1.nbd aio driver=file
    make_server_disk "$img"
    [ "$disk" = ram ] && driver=host_device
    for aio in ${QSD_AIO_MODES:-io_uring native threads}; do
        rm -f "$sock"
        start_bg "qemu-storage-daemon $name (aio=$aio)" "$dir/$name-$aio.log" qemu-storage-daemon \
            --blockdev "driver=$driver,node-name=file0,filename=$img,cache.direct=on,aio=$aio" \
            --blockdev driver=raw,node-name=disk0,file=file0 \
            --nbd-server "addr.type=unix,addr.path=$sock" \
            --export type=nbd,id=e0,node-name=disk0,name=disk0,writable=on
        if wait_for_socket "$sock" 20 "$BG_PID"; then
            qsd_aio=$aio
            started_uri="nbd+unix:///disk0?socket=$sock"
            log "qemu-storage-daemon serves $started_uri with aio=$aio, cache.direct=on"
            return 0
        fi
        stop_pid "$BG_PID" 2
        warn "qemu-storage-daemon refused aio=$aio: $(tr '\n' ' ' <"$dir/$name-$aio.log" | cut -c1-300)"
    done
    die "qemu-storage-daemon did not start with any aio mode (logs in $dir)"
}

# start_qsd_null: qsd's NBD server over its null-co driver (reads zeroes); sets started_uri.
start_qsd_null() {
    local sock=$dir/qsdnull.nbd
    start_bg "qemu-storage-daemon null-co" "$dir/qsdnull.log" qemu-storage-daemon \
        --blockdev "driver=null-co,node-name=disk0,size=$size_bytes,read-zeroes=on" \
        --nbd-server "addr.type=unix,addr.path=$sock" \
        --export type=nbd,id=e0,node-name=disk0,name=disk0,writable=on
    wait_for_socket "$sock" 20 "$BG_PID" ||
        die "qemu-storage-daemon null-co did not start: $(tr '\n' ' ' <"$dir/qsdnull.log" | cut -c1-300)"
    started_uri="nbd+unix:///disk0?socket=$sock"
    log "qemu-storage-daemon null-co serves $started_uri"
}

# ---- drl ------------------------------------------------------------------------------------
drl_uri="" drl_version="" drl_bin_given=${DRL_BIN:-}
ensure_drl_bin() {
    if [ -z "${DRL_BIN:-}" ]; then
        log "building drl (cargo build --release)"
        (cd "$root" && cargo build --release --bin drl >&2) || die "cargo build --release failed"
        DRL_BIN=$root/target/release/drl
    fi
    [ -x "$DRL_BIN" ] || die "DRL_BIN=$DRL_BIN is not an executable"
    drl_version=$("$DRL_BIN" --version 2>/dev/null || echo unknown)
}

start_drl() {
    local cfg sock
    ensure_drl_bin
    if [ -n "$drl_config" ]; then
        cfg=$drl_config
        sock=$(python3 - "$cfg" "$drl_node" <<'EOF'
import sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
for res in cfg.get("resource", []):
    on = res.get("on", {}).get(sys.argv[2])
    if on and on.get("nbd"):
        print(on["nbd"])
        break
else:
    sys.exit(f"no resource with an nbd socket on node {sys.argv[2]} in {sys.argv[1]}")
EOF
        ) || die "cannot find the NBD socket in $cfg"
        log "using drl config $cfg (node $drl_node); the disk is whatever it names"
    else
        cfg=$dir/drl.toml
        sock=$dir/r0.nbd
        make_server_disk "$dir/r0.img"
        node_config "$dir" bench "$size_bytes" >"$cfg"
    fi
    start_bg "drl daemon" "$dir/drl.log" "$DRL_BIN" daemon --config "$cfg" --node "$drl_node"
    wait_for_socket "$sock" 30 "$BG_PID" ||
        die "drl did not open its NBD socket $sock; last log lines: $(tail -n 5 "$dir/drl.log" | tr '\n' ' ')"
    if [ -n "${DRL_AFTER_START:-}" ]; then
        DRL_BIN=$DRL_BIN DRL_CONFIG=$cfg bash -c "$DRL_AFTER_START" || die "DRL_AFTER_START failed"
    fi
    local export=${DRL_EXPORT:-}
    if [ -z "$export" ]; then
        export=$(nbdinfo --list --json "nbd+unix:///?socket=$sock" 2>/dev/null | python3 -c '
import json, sys
ex = json.load(sys.stdin).get("exports", [])
print(ex[0]["export-name"] if len(ex) == 1 else "")' 2>/dev/null || true)
        export=${export:-r0}
    fi
    drl_uri="nbd+unix:///$export?socket=$sock"
    nbdinfo "$drl_uri" >"$dir/drl-nbdinfo.txt" 2>&1 || die "nbdinfo $drl_uri failed: $(head -c 300 "$dir/drl-nbdinfo.txt")"
    log "drl serves $drl_uri"
}

# start_drl_null: drl's NBD server over its null volume; sets started_uri.
start_drl_null() {
    local sock=$dir/drlnull.nbd
    ensure_drl_bin
    start_bg "drl serve-null" "$dir/drlnull.log" "$DRL_BIN" serve-null --nbd "$sock" --size "$size_bytes" \
        ${DRL_WORKERS:+--worker-threads "$DRL_WORKERS"}
    wait_for_socket "$sock" 30 "$BG_PID" ||
        die "drl serve-null did not start: $(tail -n 5 "$dir/drlnull.log" | tr '\n' ' ')"
    started_uri="nbd+unix:///null?socket=$sock"
    log "drl serve-null serves $started_uri"
}

# ---- drl replicated pairs -------------------------------------------------------------------
# start_pair KIND (disk|shm|loop): nodes a (Primary) and b (Secondary) of a fresh pair on zeroed
# files, connected over 127.0.0.1; `primary r0 --force` on a, then wait for the initial sync.
# Sets pair_uri[KIND], pair_ctl[KIND] (a's control socket), pair_pids[KIND], pair_files[KIND].
declare -A pair_uri pair_ctl pair_pids pair_files pair_secfs pair_secdio
start_pair() {
    local kind=$1 d=$dir/pair-$1 secdir secdisk pa pb cfg pid_a pid_b t0
    ensure_drl_bin
    mkdir -p "$d"
    if [ "$kind" = shm ]; then
        [ -d "$shm_dir" ] || die "SHM_DIR=$shm_dir is not a directory"
        secdir=$(mktemp -d "$shm_dir/drl-bench-nbd.XXXXXX")
        on_exit "rm -rf '$secdir'"
    else
        secdir=$d
    fi
    pair_secfs[$kind]=$(stat -f -c %T "$secdir")
    make_backing "$d/a.img"
    make_backing "$secdir/b.img"
    secdisk=$secdir/b.img
    if [ "$kind" = loop ]; then
        need_cmd losetup mount
        secdisk=$(losetup --find --show --direct-io=on "$secdir/b.img" 2>"$d/losetup.err") ||
            die "--repl loop needs a loop device (root and the loop driver): losetup: $(cat "$d/losetup.err")"
        on_exit "losetup -d '$secdisk'"
        pair_secfs[$kind]="a loop device ($secdisk, direct I/O) over a file on ${pair_secfs[$kind]}"
    fi
    pa=$(free_port)
    pb=$(free_port)
    [ "$pa" != "$pb" ] || pb=$(free_port)
    cfg=$d/drl.toml
    local workers_key=""
    [ -z "${DRL_WORKERS:-}" ] || workers_key="worker-threads = $DRL_WORKERS"
    printf '%s\n' \
        '[[node]]' 'name = "a"' "control-socket = \"$d/a.sock\"" "$workers_key" '' \
        '[[node]]' 'name = "b"' "control-socket = \"$d/b.sock\"" "$workers_key" '' \
        '[[resource]]' 'name = "r0"' "size = \"$size_bytes\"" 'secret = "bench-nbd"' '' \
        '[resource.on.a]' "address = \"127.0.0.1:$pa\"" "disk = \"$d/a.img\"" \
        "meta = \"$d/a.meta\"" "nbd = \"$d/a.nbd\"" '' \
        '[resource.on.b]' "address = \"127.0.0.1:$pb\"" "disk = \"$secdisk\"" \
        "meta = \"$d/b.meta\"" >"$cfg"
    start_bg "drl Secondary b ($kind)" "$d/b.log" "$DRL_BIN" daemon --config "$cfg" --node b
    pid_b=$BG_PID
    start_bg "drl Primary a ($kind)" "$d/a.log" "$DRL_BIN" daemon --config "$cfg" --node a
    pid_a=$BG_PID
    wait_for_socket "$d/a.nbd" 30 "$pid_a" || die "drl a ($kind) did not start: $(tail -n 5 "$d/a.log" | tr '\n' ' ')"
    wait_for_socket "$d/b.sock" 30 "$pid_b" || die "drl b ($kind) did not start: $(tail -n 5 "$d/b.log" | tr '\n' ' ')"
    python3 "$here/bench_repl.py" wait "$d/a.sock" connected 30 || die "pair $kind did not connect (logs in $d)"
    "$DRL_BIN" --config "$cfg" --node a primary r0 --force >"$d/primary.log" 2>&1 ||
        die "drl primary r0 --force failed: $(cat "$d/primary.log")"
    t0=$SECONDS
    python3 "$here/bench_repl.py" wait "$d/a.sock" insync 600 || die "initial sync of pair $kind did not finish (logs in $d)"
    # Whether the Secondary got O_DIRECT (tmpfs grants it on newer kernels, refuses it on older).
    pair_secdio[$kind]=$(grep -o 'direct_io=[a-z]*' "$d/b.log" | head -n1 | cut -d= -f2)
    log "pair $kind: initial sync done in $((SECONDS - t0))s; Secondary's file on ${pair_secfs[$kind]} (O_DIRECT: ${pair_secdio[$kind]:-?})"
    pair_uri[$kind]="nbd+unix:///r0?socket=$d/a.nbd"
    pair_ctl[$kind]=$d/a.sock
    pair_pids[$kind]="$pid_a $pid_b"
    pair_files[$kind]="$d/a.img $secdisk"
}
engine_of_kind() { case $1 in disk) echo drlrep ;; shm) echo drlshm ;; loop) echo drlloop ;; esac; }
kind_of_engine() { case $1 in drlrep) echo disk ;; drlshm) echo shm ;; drlloop) echo loop ;; *) echo "" ;; esac; }

# The daemon pid(s) of each column, for --cpu (a replicated column: Primary, then Secondary).
declare -A pid_of
if [ $want_qsd = 1 ]; then start_qsd qsd && qsd_uri=$started_uri && pid_of[qsd]=$BG_PID; fi
if [ "$aa" = 1 ]; then
    # A/A calibration: a second qsd plays drl's part, so the ratios show the noise floor.
    start_qsd aa && drl_uri=$started_uri
    drl_version="none: A/A calibration, this column is a second qemu-storage-daemon"
elif [ $want_drl = 1 ]; then
    start_drl
    pid_of[drl]=$BG_PID
fi
null_engines=()
if [ "$null" = 1 ] && [ "$aa" = 0 ]; then
    if [ $want_drl = 1 ]; then start_drl_null && null_engines+=(drlnull) && uri_null_drl=$started_uri && pid_of[drlnull]=$BG_PID; fi
    if [ $want_qsd = 1 ]; then start_qsd_null && null_engines+=(qsdnull) && uri_null_qsd=$started_uri && pid_of[qsdnull]=$BG_PID; fi
fi
for k in "${repl_kinds[@]}"; do
    start_pair "$k"
    pid_of[$(engine_of_kind "$k")]=${pair_pids[$k]}
done
# fio writes over the whole export as each server reports it.
declare -A uri_of bytes_of
export_size() { nbdinfo --size "$1" || die "nbdinfo --size $1 failed"; }
[ $want_qsd = 1 ] && { uri_of[qsd]=$qsd_uri; bytes_of[qsd]=$(export_size "$qsd_uri"); }
[ $want_drl = 1 ] && { uri_of[drl]=$drl_uri; bytes_of[drl]=$(export_size "$drl_uri"); }
[ -n "${uri_null_drl:-}" ] && { uri_of[drlnull]=$uri_null_drl; bytes_of[drlnull]=$(export_size "$uri_null_drl"); }
[ -n "${uri_null_qsd:-}" ] && { uri_of[qsdnull]=$uri_null_qsd; bytes_of[qsdnull]=$(export_size "$uri_null_qsd"); }
for k in "${repl_kinds[@]}"; do
    e=$(engine_of_kind "$k")
    uri_of[$e]=${pair_uri[$k]}
    bytes_of[$e]=$(export_size "${pair_uri[$k]}")
done
if [ -n "${bytes_of[qsd]:-}" ] && [ -n "${bytes_of[drl]:-}" ] && [ "${bytes_of[qsd]}" != "${bytes_of[drl]}" ]; then
    warn "export sizes differ: drl ${bytes_of[drl]} bytes, qsd ${bytes_of[qsd]} bytes"
fi

# ---- fio runs -------------------------------------------------------------------------------
read -r -a rows <<<"${ROWS:-randwrite-4k-qd32 randwrite-4k-qd1 write-1m-qd16}"
row_args() {
    case $1 in
    randwrite-4k-qd32) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    randwrite-4k-qd1) echo "--rw=randwrite --bs=4k --iodepth=1" ;;
    write-1m-qd16) echo "--rw=write --bs=1M --iodepth=16" ;;
    esac
}
for r in "${rows[@]}"; do
    [ -n "$(row_args "$r")" ] || die "unknown row in ROWS: $r"
done

run_fio() {
    local engine=$1 row=$2 rep=$3 uri=${uri_of[$1]} bytes=${bytes_of[$1]} out kind sampler="" t0
    local cpu_sampler="" i
    out=$dir/raw/${engine}__${row}__${rep}
    kind=$(kind_of_engine "$engine")
    log "rep $rep: $row on $engine (${runtime}s)"
    if [ -n "$kind" ]; then
        python3 "$here/bench_repl.py" sample "${pair_ctl[$kind]}" "$out.lag" &
        sampler=$!
    fi
    if [ "$cpu" = 1 ]; then
        # shellcheck disable=SC2086  # one or two pids
        python3 "$here/bench_cpu.py" sample "$out.cpuraw" ${pid_of[$engine]} &
        cpu_sampler=$!
        # fio starts once the sampler has its first sample (its start-up is not in the window).
        for ((i = 0; i < 200; i++)); do [ -s "$out.cpuraw" ] && break; sleep 0.05; done
        [ -s "$out.cpuraw" ] || die "the CPU sampler did not start for $engine"
    fi
    local perfs=() p who
    if [ "${PERF_RECORD:-}" = "$engine" ] && [ "$row" = randwrite-4k-qd32 ] && [ "$rep" = 1 ]; then
        who=daemon
        [ -n "$kind" ] && who=primary # a replicated column's pids: Primary, then Secondary
        for p in ${pid_of[$engine]}; do
            perf record -q -g -F 999 -p "$p" -o "$dir/raw/perf-$engine-$who.data" >/dev/null 2>&1 &
            perfs+=($!)
            who=secondary
        done
    fi
    local counters=() who_c=0
    if [ "$counts" = 1 ]; then
        # perf stat per daemon over fio's measured window (after its ramp), as --cpu's window.
        for p in ${pid_of[$engine]}; do
            (sleep "$ramp"; exec perf stat -x, -e "$count_events" -p "$p" -o "$out.count$who_c" -- sleep "$runtime") \
                >/dev/null 2>&1 &
            counters+=($!)
            who_c=$((who_c + 1))
        done
    fi
    # shellcheck disable=SC2046  # row_args is a list of flags
    fio --name="$engine-$row" --ioengine=nbd --uri="$uri" --size="$bytes" \
        $(row_args "$row") --numjobs=1 --time_based --runtime="$runtime" --ramp_time="$ramp" \
        --randrepeat=0 --norandommap --output-format=json --output="$out.json" >"$dir/fio.log" 2>&1 ||
        die "fio $row on $engine failed: $(tail -n 5 "$dir/fio.log" | tr '\n' ' ')"
    for p in "${perfs[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    for p in "${counters[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "$cpu_sampler" ]; then
        kill -TERM "$cpu_sampler" 2>/dev/null || true
        wait "$cpu_sampler" 2>/dev/null || true
        python3 "$here/bench_cpu.py" window "$out.cpuraw" "$runtime" >"$out.cpu" ||
            die "no CPU figures for $row on $engine"
    fi
    if [ -n "$sampler" ]; then
        kill -TERM "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        # The Secondary catches up before anything else is measured (its writes would load
        # the next run); how long that takes is reported.
        t0=$(date +%s.%N)
        python3 "$here/bench_repl.py" wait "${pair_ctl[$kind]}" insync 300 ||
            die "pair $kind did not catch up after $row"
        python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$t0" "$(date +%s.%N)" >"$out.drain"
    fi
}

engines=()
[ $want_drl = 1 ] && engines+=(drl)
engines+=("${null_engines[@]}")
for k in "${repl_kinds[@]}"; do engines+=("$(engine_of_kind "$k")"); done
[ $want_qsd = 1 ] && engines+=(qsd)
n=${#engines[@]}
i=0
for ((rep = 1; rep <= repeat; rep++)); do
    for row in "${rows[@]}"; do
        # Rotate who goes first, row by row, so drift (page cache, thermal) hits everyone.
        order=()
        for ((j = 0; j < n; j++)); do order+=("${engines[$(((i + j) % n))]}"); done
        for engine in "${order[@]}"; do run_fio "$engine" "$row" "$rep"; done
        i=$((i + 1))
    done
done

# ---- replicated pairs: byte-identical? -----------------------------------------------------
# Everything acked (in sync), then both daemons stop (SIGTERM drains and flushes), then cmp.
for k in "${repl_kinds[@]}"; do
    e=$(engine_of_kind "$k")
    python3 "$here/bench_repl.py" wait "${pair_ctl[$k]}" insync 300 || warn "pair $k not in sync at the end"
    for pid in ${pair_pids[$k]}; do stop_pid "$pid" 30; done
    # shellcheck disable=SC2086  # two file names
    if cmp ${pair_files[$k]} >"$dir/raw/$e.cmp" 2>&1; then
        echo identical >"$dir/raw/$e.cmp"
    fi
    log "pair $k: Secondary vs Primary: $(cat "$dir/raw/$e.cmp")"
done

# ---- table ----------------------------------------------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out_dir=${OUT_DIR:-$root/bench-results}
mkdir -p "$out_dir"
python3 - "$dir/meta.json" <<EOF
import json, sys
meta = {
    "date (UTC)": "$stamp",
    "mode": "$( [ "$aa" = 1 ] && echo 'A/A calibration: both columns are qemu-storage-daemon' || echo 'drl (unreplicated and replicated) vs qemu-storage-daemon')",
    "host": "$(uname -n), kernel $(uname -r), $(nproc) CPUs",
    "fio": "$(fio --version)",
    "qemu-storage-daemon": "$( [ $want_qsd = 1 ] && qemu-storage-daemon --version | head -n1 || echo 'not run')"
        + ("" if "$qsd_aio" == "" else ", aio=$qsd_aio, cache.direct=on"),
    "drl": "$( [ $want_drl = 1 ] && echo "${drl_version:-unknown}, $( [ -n "$drl_bin_given" ] && echo "binary $drl_bin_given (DRL_BIN)" || echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')")" || echo 'not run')",
    "drl runtime": "$( [ -n "${DRL_WORKERS:-}" ] && echo "$DRL_WORKERS worker thread(s) (DRL_WORKERS)" || echo "the daemon's default worker threads")",
    "backing files": "$size_bytes bytes each on $(stat -f -c %T "$dir") ($prealloc preallocation)$([ "$disk" = ram ] && echo "; drl's and qsd's unreplicated disks: loop devices over tmpfs files (--disk ram), O_DIRECT on the device")",
    "fio runs": "${runtime}s each after ${ramp}s ramp, time based, repeat $repeat, order rotated per row",
    "load average (1, 5, 15 min) at the start / at the end": "$load_start / $(cut -d' ' -f1-3 /proc/loadavg)",
}
if "$cpu" == "1":
    meta["CPU per I/O"] = "utime+stime of each daemon from /proc/PID/stat over fio's last ${runtime}s (sampled every 50 ms), divided by fio's I/Os"
if "$null" == "1" and "$aa" == "0":
    meta["null columns"] = "the transport ceiling: drl serve-null (drl's NBD server, writes discarded) and qsd's NBD server over null-co (read-zeroes=on)"

kinds = "${repl_kinds[*]}".split()
secfs = {"disk": "${pair_secfs[disk]:-}", "shm": "${pair_secfs[shm]:-}", "loop": "${pair_secfs[loop]:-}"}
secdio = {"disk": "${pair_secdio[disk]:-}", "shm": "${pair_secdio[shm]:-}", "loop": "${pair_secdio[loop]:-}"}
col_name = {"disk": "drl repl", "shm": "drl repl tmpfs", "loop": "drl repl loop"}
if kinds:
    meta["replicated"] = (
        "a fresh pair per column (initial sync done before measuring), Primary a -> Secondary b,"
        " protocol A over 127.0.0.1 TCP, both daemons on this host; "
        + "; ".join(
            f"{col_name[k]}: Secondary's {'disk is' if k == 'loop' else 'file on'} {secfs[k]}"
            + (" (same disk as the Primary)" if k == "disk" else "")
            + (", O_DIRECT" if secdio[k] == "true" else ", O_DIRECT refused: buffered fallback" if secdio[k] == "false" else "")
            for k in kinds))
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
python3 "$here/bench_nbd_table.py" "$dir/raw" "$dir/meta.json" "$out_dir/nbd-$stamp.md" "$out_dir/nbd-$stamp.csv"
for f in "$dir"/raw/perf-*.data; do
    [ -e "$f" ] || continue
    p=$(basename "$f" .data)
    perf report -i "$f" --no-children --sort symbol -g none --stdio >"$f.txt" 2>/dev/null ||
        warn "perf report of $f failed"
    # (head closes the pipe early: with pipefail that is not a failure worth reporting)
    grep -v '^$' "$f.txt" | head -n 120 >"$out_dir/nbd-$stamp-${p}.txt" || true
done
log "wrote $out_dir/nbd-$stamp.md and $out_dir/nbd-$stamp.csv"
