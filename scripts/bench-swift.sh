#!/usr/bin/env bash
# Snapshot streaming benchmark: drl's stream against `swift upload --segment-size 64M`
# (python-swiftclient) into the same one-node Swift, in one run:
#   1. a volume of random data (incompressible),
#   2. a half-empty volume (first half random, second half zeros),
#   3. an incremental after changing 1% of the volume (clustered extents).
# Prints a markdown table (and writes bench-results/swift-<date>.{md,csv}).
# Goals (issue 5): drl >= 1.2x swiftclient's throughput on random data, far ahead on the
# half-empty volume, and the incremental sends no more than 2% of the volume.
#
# Usage: scripts/bench-swift.sh [--size 1GiB]
#   SIZE=1GiB   volume size    DRL_BIN=path   use this drl binary (else cargo build --release)
#   CHUNK=4MiB PAR=8           drl's chunk size and chunks in flight ([stream] in its config)
#   ONLY=random                run only the random-data case
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
size=${SIZE:-1GiB}
[ "${1:-}" = --size ] && size=$2
need_pkgs nbdcopy:libnbd-bin qemu-io:qemu-utils swift:python3-swiftclient curl:curl
bytes=$(python3 -c "import sys;u={'KiB':1<<10,'MiB':1<<20,'GiB':1<<30};s=sys.argv[1];print(int(s[:-3])*u[s[-3:]])" "$size")
top=$(repo_root)
drl=$(drl_bin)
"$here/swift-aio.sh" start >/dev/null
AUTH=http://127.0.0.1:8080/auth/v1.0
SW=(swift -A "$AUTH" -U test:tester -K testing)
work=$(mktemp -d "$top/target/bench-swift.XXXXXX")
on_exit "rm -rf '$work'"
ts=$(date -u +%Y%m%dT%H%M%SZ)
# Leave the test bed as it was: delete this run's containers at exit.
on_exit "for c in \$(${SW[*]} list 2>/dev/null | grep -- '-$ts' || true); do ${SW[*]} delete \$c >/dev/null 2>&1 || true; done"
cat >"$work/drl.toml" <<TOML
[[node]]
name = "bench"
control-socket = "$work/bench.sock"
[[resource]]
name = "r0"
size = "$bytes"
[resource.on.bench]
disk = "$work/r0.img"
meta = "$work/r0.meta"
nbd = "$work/r0.nbd"
[swift]
auth = "tempauth"
url = "$AUTH"
user = "test:tester"
key = "testing"
[stream]
chunk-size = "${CHUNK:-4MiB}"
parallelism = ${PAR:-8}
TOML
start_bg drl "$work/drl.log" "$drl" daemon --config "$work/drl.toml" --node bench
wait_for_socket "$work/r0.nbd" 20 "$BG_PID" || die "drl did not start: $(cat "$work/drl.log")"
dctl() { "$drl" --config "$work/drl.toml" --node bench "$@"; }
uri="nbd+unix:///?socket=$work/r0.nbd"
now() { date +%s.%N; }
rows=()
row() { rows+=("$1|$2|$3|$4|$5"); }   # case | tool | seconds | bytes sent | MiB/s of volume

log "preparing $size of random data"
head -c "$bytes" /dev/urandom >"$work/rand.img"
nbdcopy "$work/rand.img" "$uri"

stream_case() { # name snapshot container
  local t0 t1 rep
  t0=$(now)
  rep=$(dctl stream r0 "$2" --to "swift://$3/r0" --json)
  t1=$(now)
  echo "$rep" >"$work/$1.json"
  python3 - "$1" "$t0" "$t1" "$bytes" "$work/$1.json" <<'PY'
import json, sys
name, t0, t1, size, f = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = json.load(open(f))
secs = t1 - t0
print(f"{secs:.2f}|{r['bytes_uploaded']}|{size / secs / 2**20:.1f}")
PY
}
swc_case() { # file container
  local t0 t1
  t0=$(now)
  (cd "$work" && "${SW[@]}" upload --segment-size 64M --object-name vol.img "$2" "$(basename "$1")" >/dev/null)
  t1=$(now)
  python3 -c "import sys;s=float(sys.argv[2])-float(sys.argv[1]);print(f'{s:.2f}|{int(sys.argv[3])}|{int(sys.argv[3])/s/2**20:.1f}')" "$t0" "$t1" "$bytes"
}

log "case 1: random data"
dctl snapshot create r0 rand >/dev/null
IFS='|' read -r s b r <<<"$(stream_case rand rand "bench-drl-$ts")"; row "random" drl "$s" "$b" "$r"
IFS='|' read -r s b r <<<"$(swc_case "$work/rand.img" "bench-swc-$ts")"; row "random" swiftclient "$s" "$b" "$r"

if [ "${ONLY:-}" != random ]; then
log "case 2: half-empty volume"
half=$((bytes / 2))
qemu-io -f raw -c "write -z $half $half" "$uri" >/dev/null
dctl snapshot create r0 half >/dev/null
IFS='|' read -r s b r <<<"$(stream_case half half "bench-drl-half-$ts")"; row "half-empty" drl "$s" "$b" "$r"
cp --sparse=always "$work/rand.img" "$work/half.img"
truncate -s "$half" "$work/half.img"; truncate -s "$bytes" "$work/half.img"
IFS='|' read -r s b r <<<"$(swc_case "$work/half.img" "bench-swc-half-$ts")"; row "half-empty" swiftclient "$s" "$b" "$r"

log "case 3: 1% changed, incremental"
step=$((bytes / 10)); ext=$((bytes / 1000))
cmds=()
for i in $(seq 0 9); do cmds+=(-c "write -P 0x$((i + 16)) $((i * step)) $ext"); done
qemu-io -f raw "${cmds[@]}" "$uri" >/dev/null
dctl snapshot create r0 incr >/dev/null
IFS='|' read -r s b r <<<"$(stream_case incr incr "bench-drl-half-$ts")"; row "1% changed (incremental)" drl "$s" "$b" "$r"
IFS='|' read -r s b r <<<"$(swc_case "$work/half.img" "bench-swc-half-$ts")"; row "1% changed (re-upload)" swiftclient "$s" "$b" "$r"
fi

mkdir -p "$top/bench-results"
out="$top/bench-results/swift-$ts"
python3 - "$out" "$bytes" "${rows[@]}" <<'PY'
import os, sys
out, size, rows = sys.argv[1], int(sys.argv[2]), [r.split('|') for r in sys.argv[3:]]
by = {}
for case, tool, secs, sent, rate in rows:
    by.setdefault(case.split(' (')[0], {})[tool] = (float(secs), int(sent), float(rate))
lines = ["# Snapshot stream to Swift: drl vs swiftclient", "",
         f"Volume {size / 2**30:.2f} GiB; one-node Swift on 127.0.0.1 (loop XFS); drl chunk {os.environ.get('CHUNK', '4MiB')}, {os.environ.get('PAR', '8')} in flight; swift upload --segment-size 64M (10 threads).", "",
         "| case | tool | seconds | bytes sent | % of volume sent | volume MiB/s | drl speed-up |", "|---|---|---:|---:|---:|---:|---:|"]
csv = ["case,tool,seconds,bytes_sent,volume_mib_per_s"]
for case, tool, secs, sent, rate in rows:
    base = case.split(' (')[0]
    both = by[base]
    up = f"{both['swiftclient'][0] / both['drl'][0]:.2f}x" if tool == 'drl' and 'swiftclient' in both else ""
    lines.append(f"| {case} | {tool} | {float(secs):.2f} | {int(sent):,} | {100 * int(sent) / size:.2f}% | {float(rate):.1f} | {up} |")
    csv.append(f"{case},{tool},{secs},{sent},{rate}")
open(out + ".md", "w").write("\n".join(lines) + "\n")
open(out + ".csv", "w").write("\n".join(csv) + "\n")
print("\n".join(lines))
PY
log "wrote $out.md and $out.csv"
