#!/usr/bin/env bash
# Consistency group benchmark (issue 15): what the group's one write order costs. fio writes
# 4 KiB random writes at queue depth 32 to two volumes at once (one fio job per volume, fio's
# nbd engine on each volume's own NBD export), replicated Primary a -> Secondary b over
# 127.0.0.1 TCP (protocol A), in two setups served by the same two daemons:
#   group  one resource `db` of two volumes: one connection, one epoch order, one send queue;
#          a barrier closes an epoch across both volumes and b acks it after flushing both
#   two    the same two volumes as two one-volume resources `v0` and `v1`: a connection, an
#          epoch order and a send queue each (no order between them: not crash-consistent)
# The runs alternate between the setups (group first in odd repeats, two first in even ones),
# so drift on a loaded host hits both. Reported per setup (medians over the repeats): IOPS of
# each volume and in total, p50/p99 completion latency of each volume, replication lag on the
# Primary (`lag_ms` of `drl status --json` every 200 ms: max and p50 over all samples; for the
# two resources per sample the older of the two, since the backup site's data is as old as its
# oldest volume), how long the Secondary took to catch up after fio stopped, and the CPU per
# I/O of each daemon (utime+stime over fio's measured seconds / both jobs' I/Os). At the end
# every Secondary volume is compared with its Primary volume (daemons stopped, cmp).
# Writes bench-results/group-<date>.{md,csv}.
#
# Usage: scripts/bench-group.sh [--runtime S] [--repeat N] [--size SIZE] [--secondary shm|disk]
#                               [--keep]
#   --runtime S       seconds per fio run, time based, after RAMP seconds (default 10)
#   --repeat N        runs per setup; the table shows medians (default 3)
#   --size SIZE       size of each volume (default 256MiB; four on each node)
#   --secondary shm   the Secondary's files on tmpfs (SHM_DIR, default /dev/shm; the default),
#                     so the Primary's disk is not shared with the Secondary's writes; disk:
#                     beside the Primary's, on the same disk
#   --keep            keep the work dir (configs, logs, raw fio JSON, lag and CPU samples) and
#                     the Secondary's files
# Environment: RAMP=2, SHM_DIR=/dev/shm, PREALLOC=full (see lib.sh's make_backing_file),
#   DRL_BIN=path (else `cargo build --release`), DRL_WORKERS=N (both daemons' runtime worker
#   threads, `[[node]] worker-threads`; unset: the daemon's default), BENCH_DIR=dir (parent of
#   the work dir, default <repo>/target; must allow O_DIRECT), OUT_DIR=dir (default
#   <repo>/bench-results).

set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

runtime=10 repeat=3 size=256MiB secondary=shm keep=${KEEP:-0}
ramp=${RAMP:-2}
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
while [ $# -gt 0 ]; do
    case $1 in
    --runtime) runtime=${2:?}; shift 2 ;;
    --repeat) repeat=${2:?}; shift 2 ;;
    --size) size=${2:?}; shift 2 ;;
    --secondary) secondary=${2:?}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ $runtime =~ ^[0-9]+$ && $runtime -gt 0 ]] || die "runtime must be a positive number of seconds: $runtime"
[[ $repeat =~ ^[0-9]+$ && $repeat -gt 0 ]] || die "repeat must be a positive count: $repeat"
case $secondary in shm | disk) ;; *) die "--secondary takes shm or disk, not $secondary" ;; esac
need_pkgs fio:fio nbdinfo:libnbd-bin python3:python3 fallocate:util-linux
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (fio --enghelp=nbd)"
vol_bytes=$(parse_size_bytes "$size") || die "cannot parse size $size"
[ $((vol_bytes % 1048576)) = 0 ] && [ "$vol_bytes" -gt 0 ] || die "size must be a positive multiple of 1 MiB: $size"

root=$(repo_root)
drl_given=${DRL_BIN:-}
drl=$(drl_bin)
mkdir -p "${BENCH_DIR:-$root/target}"
dir=$(mktemp -d "${BENCH_DIR:-$root/target}/bench-group.XXXXXX")
if [ "$keep" = 1 ]; then on_exit "log 'kept $dir'"; else on_exit "rm -rf '$dir'"; fi
secdir=$dir/b
if [ "$secondary" = shm ]; then
    secdir=$(mktemp -d "${SHM_DIR:-/dev/shm}/drl-bench-group.XXXXXX")
    if [ "$keep" = 1 ]; then on_exit "log 'kept $secdir'"; else on_exit "rm -rf '$secdir'"; fi
fi
mkdir -p "$dir/a" "$dir/b" "$dir/raw"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# Files: the group's volumes db-0 and db-1, the separate resources' v0 and v1, on each node.
vols="db-0 db-1 v0 v1"
for v in $vols; do
    make_backing_file "$dir/a/$v.img" "$vol_bytes" "${PREALLOC:-full}"
    make_backing_file "$secdir/$v.img" "$vol_bytes" "${PREALLOC:-full}"
done
log "backing files: $vols, $size each, on $(stat -f -c %T "$dir") (a) and $(stat -f -c %T "$secdir") (b)"

# One config, both nodes, three resources, each with its own port on each node.
vol_files() { # NODE VOLUME: the disk, meta (and on a, nbd) keys of VOLUME on NODE, one a line
    local n=$1 v=$2 fdir=$dir/a
    [ "$n" = b ] && fdir=$secdir
    printf 'disk = "%s/%s.img"\nmeta = "%s/%s/%s.meta"\n' "$fdir" "$v" "$dir" "$n" "$v"
    [ "$n" = a ] && printf 'nbd = "%s/a/%s.nbd"\n' "$dir" "$v"
    return 0
}
cfg=$dir/drl.toml
{
    for n in a b; do
        printf '[[node]]\nname = "%s"\ncontrol-socket = "%s/%s.sock"\n' "$n" "$dir" "$n"
        [ -z "${DRL_WORKERS:-}" ] || printf 'worker-threads = %s\n' "$DRL_WORKERS"
        printf '\n'
    done
    printf '[[resource]]\nname = "db"\nsecret = "bench-group"\n'
    for v in 0 1; do printf '[[resource.volume]]\nnumber = %s\nsize = "%s"\n' "$v" "$vol_bytes"; done
    for n in a b; do
        printf '[resource.on.%s]\naddress = "127.0.0.1:%s"\n' "$n" "$(free_port)"
        for v in 0 1; do printf 'volume.%s = { %s }\n' "$v" "$(vol_files "$n" "db-$v" | paste -sd, | sed 's/,/, /g')"; done
    done
    for r in v0 v1; do
        printf '\n[[resource]]\nname = "%s"\nsize = "%s"\nsecret = "bench-group"\n' "$r" "$vol_bytes"
        for n in a b; do
            printf '[resource.on.%s]\naddress = "127.0.0.1:%s"\n' "$n" "$(free_port)"
            vol_files "$n" "$r"
        done
    done
} >"$cfg"
"$drl" --config "$cfg" --node a check-config >/dev/null || die "the generated config is refused: $cfg"

start_bg "drl Secondary b" "$dir/b.log" "$drl" daemon --config "$cfg" --node b
pid_b=$BG_PID
start_bg "drl Primary a" "$dir/a.log" "$drl" daemon --config "$cfg" --node a
pid_a=$BG_PID
for s in a/db-0.nbd a/db-1.nbd a/v0.nbd a/v1.nbd a.sock; do
    wait_for_socket "$dir/$s" 30 "$pid_a" || die "drl a did not start: $(tail -n 5 "$dir/a.log" | tr '\n' ' ')"
done
wait_for_socket "$dir/b.sock" 30 "$pid_b" || die "drl b did not start: $(tail -n 5 "$dir/b.log" | tr '\n' ' ')"
python3 "$here/bench_repl.py" wait "$dir/a.sock" connected 60 db,v0,v1 || die "the pair did not connect (logs in $dir)"
for r in db v0 v1; do
    "$drl" --config "$cfg" --node a primary "$r" --force >"$dir/primary.log" 2>&1 ||
        die "drl primary $r --force failed: $(cat "$dir/primary.log")"
done
t0=$SECONDS
python3 "$here/bench_repl.py" wait "$dir/a.sock" insync 900 db,v0,v1 || die "the initial sync did not finish (logs in $dir)"
secdio=$(grep -o 'direct_io=[a-z]*' "$dir/b.log" | head -n1 | cut -d= -f2)
log "initial sync done in $((SECONDS - t0))s; Secondary's files on $(stat -f -c %T "$secdir") (O_DIRECT: ${secdio:-?})"

# ---- fio runs -------------------------------------------------------------------------------
declare -A uris=(
    [group]="nbd+unix:///db/0?socket=$dir/a/db-0.nbd nbd+unix:///db/1?socket=$dir/a/db-1.nbd"
    [two]="nbd+unix:///v0?socket=$dir/a/v0.nbd nbd+unix:///v1?socket=$dir/a/v1.nbd"
)
declare -A resources=([group]=db [two]=v0,v1)
for setup in group two; do
    for u in ${uris[$setup]}; do
        [ "$(nbdinfo --size "$u")" = "$vol_bytes" ] || die "$u is not $vol_bytes bytes"
    done
done

run_fio() {
    local setup=$1 rep=$2 out=$dir/raw/$1__$2 lag cpu i u jobs=() t
    log "rep $rep: $setup (${runtime}s)"
    i=0
    for u in ${uris[$setup]}; do
        jobs+=(--name="vol$i" --uri="$u")
        i=$((i + 1))
    done
    python3 "$here/bench_repl.py" sample "$dir/a.sock" "$out.lag" 0.2 "${resources[$setup]}" &
    lag=$!
    python3 "$here/bench_cpu.py" sample "$out.cpuraw" "$pid_a" "$pid_b" &
    cpu=$!
    for ((i = 0; i < 200; i++)); do [ -s "$out.cpuraw" ] && break; sleep 0.05; done
    [ -s "$out.cpuraw" ] || die "the CPU sampler did not start"
    fio --ioengine=nbd --size="$vol_bytes" --rw=randwrite --bs=4k --iodepth=32 --time_based \
        --runtime="$runtime" --ramp_time="$ramp" --randrepeat=0 --norandommap \
        --output-format=json --output="$out.json" "${jobs[@]}" >"$dir/fio.log" 2>&1 ||
        die "fio on $setup failed: $(tail -n 5 "$dir/fio.log" | tr '\n' ' ')"
    kill -TERM "$cpu" "$lag" 2>/dev/null || true
    wait "$cpu" "$lag" 2>/dev/null || true
    python3 "$here/bench_cpu.py" window "$out.cpuraw" "$runtime" >"$out.cpu" || die "no CPU figures for $setup"
    # The Secondary catches up before the next run (its writes would load it).
    t=$(date +%s.%N)
    python3 "$here/bench_repl.py" wait "$dir/a.sock" insync 300 "${resources[$setup]}" ||
        die "$setup did not catch up after its run"
    python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$t" "$(date +%s.%N)" >"$out.drain"
}
for ((rep = 1; rep <= repeat; rep++)); do
    if ((rep % 2)); then order="group two"; else order="two group"; fi
    for setup in $order; do run_fio "$setup" "$rep"; done
done

# ---- byte-identical? ------------------------------------------------------------------------
stop_pid "$pid_a" 30
stop_pid "$pid_b" 30
for v in $vols; do
    if cmp "$dir/a/$v.img" "$secdir/$v.img" >"$dir/raw/$v.cmp" 2>&1; then echo identical >"$dir/raw/$v.cmp"; fi
    log "$v: Secondary vs Primary: $(cat "$dir/raw/$v.cmp")"
done

# ---- table ----------------------------------------------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out_dir=${OUT_DIR:-$root/bench-results}
mkdir -p "$out_dir"
case $drl in
*/target/release/*) build="release build" ;;
*/target/debug/*) build="DEBUG build (plumbing only, not a result)" ;;
*) build="binary $drl" ;;
esac
rerun="scripts/bench-group.sh --runtime $runtime --repeat $repeat --size $size --secondary $secondary"
python3 - "$dir/meta.json" <<EOF
import json, sys
json.dump({
    "date (UTC)": "$stamp",
    "re-run": "\`$rerun\`" + (" with DRL_BIN=$drl_given" if "$drl_given" else "") + (" DRL_WORKERS=${DRL_WORKERS:-}" if "${DRL_WORKERS:-}" else ""),
    "host": "$(uname -n), kernel $(uname -r), $(nproc) CPUs, shared with other work (load below)",
    "load average (1, 5, 15 min) at the start / at the end": "$load_start / $(cut -d' ' -f1-3 /proc/loadavg)",
    "fio": "$(fio --version): one job per volume, ioengine=nbd, 4 KiB random writes, iodepth 32 each, ${runtime}s after ${ramp}s ramp, $repeat runs per setup alternating",
    "drl": "$("$drl" --version 2>/dev/null || echo unknown), $build, commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')",
    "volumes": "$vol_bytes bytes each (${PREALLOC:-full} preallocation); Primary's on $(stat -f -c %T "$dir"), Secondary's on $(stat -f -c %T "$secdir") (O_DIRECT: ${secdio:-?})",
    "pair": "Primary a -> Secondary b, both daemons on this host, protocol A over 127.0.0.1; each daemon serves all three resources (db, v0, v1); the idle setup's resources stay connected",
}, open(sys.argv[1], "w"), indent=1)
EOF
python3 "$here/bench_group_table.py" "$dir/raw" "$dir/meta.json" "$out_dir/group-$stamp.md" "$out_dir/group-$stamp.csv"
log "wrote $out_dir/group-$stamp.md and $out_dir/group-$stamp.csv"
