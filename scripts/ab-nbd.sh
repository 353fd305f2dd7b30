#!/usr/bin/env bash
# A/B two drl binaries on one fio row, alternating runs, and print a table of throughput, CPU
# microseconds per I/O and page faults per I/O of the daemon (perf stat on its pid). For a
# change's own effect on this noisy shared machine: the two binaries take turns, and the
# per-I/O counters (page faults above all) barely depend on the load.
#
# Usage: scripts/ab-nbd.sh BIN_A BIN_B [RW BS QD]     (default: write 1M 16)
#   RUNS=2      alternations (A B A B ...)     RUNTIME=6   seconds per fio run
#   SPARSE=0    1: a sparse image per run (as before); 0: one image, fully written once, that
#               every run reuses (writes into unwritten ext4 extents are punted to io_uring's
#               worker threads, which was half the daemon's CPU at 4 KiB and hid the NBD path)
#
# Example (the effect of the last commit):
#   git stash; cargo build --release; cp target/release/drl /tmp/drl-a; git stash pop
#   cargo build --release; scripts/ab-nbd.sh /tmp/drl-a target/release/drl write 1M 16
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

[ $# -ge 2 ] || die "usage: scripts/ab-nbd.sh BIN_A BIN_B [RW BS QD]"
bin_a=$1 bin_b=$2 rw=${3:-write} bs=${4:-1M} qd=${5:-16}
runs=${RUNS:-2} runtime=${RUNTIME:-6} sparse=${SPARSE:-0}
for b in "$bin_a" "$bin_b"; do [ -x "$b" ] || die "not an executable: $b"; done
need_pkgs fio:fio perf:linux-perf

dir=$(mktemp -d /tmp/drl-ab.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
node_config "$dir" ab 1GiB >"$dir/drl.toml"
if [ "$sparse" = 0 ]; then
  dd if=/dev/zero of="$dir/r0.img" bs=1M count=1024 oflag=direct conv=fsync status=none ||
    die "writing the image failed"
fi

# one BIN LABEL: a fresh volume, the daemon, fio under perf stat; prints a table row.
one() {
  local bin=$1 label=$2 pid pp
  rm -rf "$dir"/r0.meta "$dir"/r0.nbd "$dir/ab.sock"
  if [ "$sparse" = 1 ]; then rm -f "$dir/r0.img"; truncate -s 1G "$dir/r0.img"; fi
  "$bin" daemon --config "$dir/drl.toml" --node ab >"$dir/drl.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -S "$dir/r0.nbd" ] && break; sleep 0.1; done
  [ -S "$dir/r0.nbd" ] || die "$label: the daemon did not start (log: $(tail -3 "$dir/drl.log"))"
  perf stat -e page-faults,task-clock -p "$pid" -o "$dir/perf.txt" &
  pp=$!
  fio --name=ab --ioengine=nbd --uri="nbd+unix:///r0?socket=$dir/r0.nbd" --rw="$rw" --bs="$bs" \
    --iodepth="$qd" --size=1G --time_based --runtime="$runtime" \
    --output-format=json --output="$dir/fio.json" >"$dir/fio.err" 2>&1 ||
    die "$label: fio failed: $(tail -3 "$dir/fio.err")"
  kill -INT "$pp"; wait "$pp" || true
  kill "$pid"; wait "$pid" || true
  python3 - "$label" "$dir" <<'PY'
import json, re, sys
label, d = sys.argv[1], sys.argv[2]
job = json.load(open(f"{d}/fio.json"))["jobs"][0]
io = job["write"] if job["write"]["io_bytes"] else job["read"]
perf = open(f"{d}/perf.txt").read()
faults = int(re.search(r"([\d,]+)\s+page-faults", perf).group(1).replace(",", ""))
msec = float(re.search(r"([\d.,]+)\s+msec task-clock", perf).group(1).replace(",", ""))
n = max(io["total_ios"], 1)
print(f"| {label} | {io['bw'] / 1024:,.0f} | {io['iops']:,.0f} | {msec * 1000 / n:.1f} | {faults / n:.1f} |")
PY
}

log "A = $bin_a, B = $bin_b; fio $rw bs=$bs iodepth=$qd, ${runtime}s, $runs alternations; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| binary | MiB/s | IOPS | daemon CPU µs/IO | page faults/IO |"
echo "|---|---:|---:|---:|---:|"
for _ in $(seq "$runs"); do
  one "$bin_a" A
  one "$bin_b" B
done
