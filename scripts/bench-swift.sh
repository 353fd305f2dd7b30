#!/usr/bin/env bash
# Snapshot streaming benchmark: drl's stream against `swift upload --segment-size 64M`
# (python-swiftclient) into the same one-node Swift, in one run:
#   1. a volume of random data (incompressible),
#   2. a half-empty volume (first half random, second half zeros),
#   3. an incremental after changing 1% of the volume: 10 clustered extents of random
#      (incompressible) data, 4 KiB aligned, against swiftclient re-uploading the volume.
# Every case runs REPEAT times (fresh volume data, snapshots and containers each time); the
# table shows the median of each row and drl's speed-up over swiftclient in the same case.
# Writes bench-results/swift-<date>.{md,csv} (the csv holds every repetition).
# Goals (issue 5): drl >= 1.2x swiftclient's throughput on random data, far ahead on the
# half-empty volume, and the incremental sends no more than 2% of the volume.
#
# Usage: scripts/bench-swift.sh [--size 1GiB]
#   SIZE=1GiB   volume size      DRL_BIN=path   use this drl binary (else cargo build --release)
#   REPEAT=3    repetitions      ONLY=random    run only the random-data case
#   CHUNK=, OBJ=, PAR=           drl's chunk size, object size, parallelism (default: drl's)
#   DRL_ENV="K=V ..."           environment of the drl daemon only
#   DRL_LOG_TO=FILE             keep the drl daemon's log there (the work directory goes at exit)
#   RESTORE=0   skip the restore of the random volume: `drl restore` of drl's snapshot into a
#               file (checked byte for byte against the volume), against `swift download` of
#               swiftclient's upload and, as the ceiling, curl GETting the 16 MiB pieces 8 at a
#               time into files; all three write 1 GiB into the same directory on disk
#   CEILING=0   skip the ceiling row: curl PUTs the random volume's 16 MiB pieces from memory,
#               8 at a time (what this Swift takes at most from any client)
#   WARM=1      do not drop the page cache before each run: swiftclient then reads its copy of
#               the volume from memory while drl reads its disk (O_DIRECT); the old method
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
size=${SIZE:-1GiB}
[ "${1:-}" = --size ] && size=$2
repeat=${REPEAT:-3}
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
drop_containers() { # delete this run's containers (not timed)
  local c
  for c in $("${SW[@]}" list 2>/dev/null | grep -- "-$ts" || true); do
    "${SW[@]}" delete "$c" >/dev/null 2>&1 || true
  done
}
# Leave the test bed as it was.
on_exit drop_containers
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
TOML
if [ -n "${CHUNK:-}${PAR:-}" ]; then
  { echo "[stream]"
    [ -n "${CHUNK:-}" ] && echo "chunk-size = \"$CHUNK\""
    [ -n "${PAR:-}" ] && echo "parallelism = $PAR"
  } >>"$work/drl.toml"
fi
[ -n "${DRL_LOG_TO:-}" ] && on_exit "cp '$work/drl.log' '$DRL_LOG_TO'"
start_bg drl "$work/drl.log" env ${DRL_ENV:-} "$drl" daemon --config "$work/drl.toml" --node bench
wait_for_socket "$work/r0.nbd" 20 "$BG_PID" || die "drl did not start: $(cat "$work/drl.log")"
dctl() { "$drl" --config "$work/drl.toml" --node bench "$@"; }
uri="nbd+unix:///?socket=$work/r0.nbd"
now() { date +%s.%N; }
rows=()
row() { rows+=("$1|$2|$3|$4|$5|$6|$7"); }   # rep | case | tool | seconds | bytes sent | cpu seconds | swift cpu seconds
swift_dir=${DRL_SWIFT_DIR:-/var/tmp/drl-swift}
swift_ticks() { # CPU ticks used so far by Swift's proxy and object servers (their workers included)
  local s pg
  for s in proxy object; do
    pg=$(pidfile_pid "$swift_dir/run/$s.pid") || continue
    for p in $(pgrep -g "$pg"); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null; done
  done | awk '{t += $1} END {print t + 0}'
}
timed() { # tool-case args... -> its own line, then "|swift cpu seconds"
  local w0 w1 out
  # Both tools start with a quiet disk and read the volume from it: drl reads its disk with
  # O_DIRECT, so swiftclient's copy of the volume must not be served from the page cache.
  sync
  [ "${WARM:-0}" = 1 ] || echo 1 >/proc/sys/vm/drop_caches
  w0=$(swift_ticks)
  out=$("$@")
  w1=$(swift_ticks)
  echo "$out|$(python3 -c "import sys;print(f'{(int(sys.argv[2])-int(sys.argv[1]))/int(sys.argv[3]):.2f}')" "$w0" "$w1" "$(getconf CLK_TCK)")"
}
pair() { # rep case drl-args... -- swiftclient-args...: both tools, in turn order alternating by rep
  local rep=$1 case=$2 d=() c=() s b c1 w
  shift 2
  while [ "$1" != -- ]; do d+=("$1"); shift; done
  shift; c=("$@")
  if [ $((rep % 2)) = 1 ]; then
    IFS='|' read -r s b c1 w <<<"$(timed stream_case "${d[@]}")"; row "$rep" "$case" drl "$s" "$b" "$c1" "$w"
    IFS='|' read -r s b c1 w <<<"$(timed swc_case "${c[@]}")"; row "$rep" "$case" swiftclient "$s" "$b" "$c1" "$w"
  else
    IFS='|' read -r s b c1 w <<<"$(timed swc_case "${c[@]}")"; row "$rep" "$case" swiftclient "$s" "$b" "$c1" "$w"
    IFS='|' read -r s b c1 w <<<"$(timed stream_case "${d[@]}")"; row "$rep" "$case" drl "$s" "$b" "$c1" "$w"
  fi
}

stream_case() { # name snapshot container -> seconds|bytes sent|drl cpu seconds
  local t0 t1 c0 c1 rep
  c0=$(awk '{print $14 + $15}' "/proc/$BG_PID/stat")
  t0=$(now)
  rep=$(dctl stream r0 "$2" --to "swift://$3/r0" ${OBJ:+--object-size "$OBJ"} --json)
  t1=$(now)
  c1=$(awk '{print $14 + $15}' "/proc/$BG_PID/stat")
  echo "$rep" >"$work/$1.json"
  python3 - "$t0" "$t1" "$work/$1.json" "$c0" "$c1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
t0, t1, f, c0, c1, hz = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
r = json.load(open(f))
print(f"{t1 - t0:.2f}|{r['bytes_uploaded']}|{(c1 - c0) / hz:.2f}")
PY
}
ceiling_case() { # dir-of-pieces container -> seconds|bytes sent|cpu seconds (of curl)
  # What this Swift takes at most: curl PUTs the volume's 16 MiB pieces from memory, 8 at a
  # time, no hashing and no disk read on the client.
  local t0 t1 tf tok url
  read -r tok url < <(curl -s -i -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' "$AUTH" |
    tr -d '\r' | awk '/^X-Auth-Token:/{t=$2} /^X-Storage-Url:/{u=$2} END{print t, u}')
  curl -s -f -X PUT -H "X-Auth-Token: $tok" "$url/$2" >/dev/null
  tf="$work/time.$$"
  t0=$(now)
  (cd "$1" && ls | /usr/bin/time -f '%U %S' -o "$tf" xargs -P 8 -I{} \
    curl -s -f -o /dev/null -X PUT -H "X-Auth-Token: $tok" -T {} "$url/$2/{}")
  t1=$(now)
  python3 -c "import sys;s=float(sys.argv[2])-float(sys.argv[1]);u,k=open(sys.argv[4]).read().split()[-2:];print(f'{s:.2f}|{int(sys.argv[3])}|{float(u)+float(k):.2f}')" "$t0" "$t1" "$bytes" "$tf"
}
restore_case() { # drl|swc|curl container -> seconds|bytes received|cpu seconds (of the client)
  local t0 t1 tf=$work/time.$$ out=$work/restored tok url
  rm -rf "$out"; mkdir -p "$out"
  case $1 in
    curl)
      read -r tok url < <(curl -s -i -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' "$AUTH" |
        tr -d '\r' | awk '/^X-Auth-Token:/{t=$2} /^X-Storage-Url:/{u=$2} END{print t, u}') ;;
  esac
  t0=$(now)
  case $1 in
    drl) /usr/bin/time -f '%U %S' -o "$tf" "$drl" --config "$work/drl.toml" --node bench \
           restore "swift://$2/r0/$3" --to "$out/vol.img" >/dev/null 2>"$work/restore.err" ||
           die "drl restore failed: $(tail -c 300 "$work/restore.err")" ;;
    swc) (cd "$out" && /usr/bin/time -f '%U %S' -o "$tf" "${SW[@]}" download "$2" vol.img >/dev/null) ;;
    curl) "${SW[@]}" list "$2" | /usr/bin/time -f '%U %S' -o "$tf" xargs -P 8 -I{} \
            curl -s -f -o "$out/{}" -H "X-Auth-Token: $tok" "$url/$2/{}" ;;
  esac
  t1=$(now)
  if [ "$1" != curl ]; then
    cmp -s "$out/vol.img" "$work/rand.img" || die "$1 restored other bytes than the volume's"
  fi
  python3 -c "import sys;s=float(sys.argv[2])-float(sys.argv[1]);u,k=open(sys.argv[4]).read().split()[-2:];print(f'{s:.2f}|{int(sys.argv[3])}|{float(u)+float(k):.2f}')" "$t0" "$t1" "$(find "$out" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')" "$tf"
  rm -rf "$out"
}
swc_case() { # file container -> seconds|bytes sent|cpu seconds (of the swift client)
  local t0 t1 tf
  tf="$work/time.$$"
  t0=$(now)
  (cd "$work" && /usr/bin/time -f '%U %S' -o "$tf" "${SW[@]}" upload --segment-size 64M --object-name vol.img "$2" "$(basename "$1")" >/dev/null)
  t1=$(now)
  python3 -c "import sys;s=float(sys.argv[2])-float(sys.argv[1]);u,k=open(sys.argv[4]).read().split()[-2:];print(f'{s:.2f}|{int(sys.argv[3])}|{float(u)+float(k):.2f}')" "$t0" "$t1" "$bytes" "$tf"
}

step=$((bytes / 10 / 4096 * 4096)); ext=$((bytes / 1000 / 4096 * 4096))
for i in $(seq 0 9); do head -c "$ext" /dev/urandom >"$work/ext$i.bin"; done
for r in $(seq 1 "$repeat"); do
  uptime >&2
  for s in half incr; do dctl snapshot delete r0 "$s$((r - 1))" >/dev/null 2>&1 || true; done
  log "repetition $r/$repeat: preparing $size of random data"
  head -c "$bytes" /dev/urandom >"$work/rand.img"
  nbdcopy "$work/rand.img" "$uri"

  log "case 1: random data"
  dctl snapshot create r0 "rand$r" >/dev/null
  pair "$r" random rand "rand$r" "bench-drl-$r-$ts" -- "$work/rand.img" "bench-swc-$r-$ts"
  if [ "${CEILING:-1}" = 1 ]; then
    pieces=$(mktemp -d /dev/shm/drl-bench-swift.XXXXXX)
    on_exit "rm -rf '$pieces'"   # a volume's worth of RAM, also when interrupted
    split -b 16M -a 3 "$work/rand.img" "$pieces/p"
    IFS='|' read -r s b c1 w <<<"$(timed ceiling_case "$pieces" "bench-curl-$r-$ts")"
    row "$r" random "curl (ceiling)" "$s" "$b" "$c1" "$w"
    rm -rf "$pieces"
  fi
  if [ "${RESTORE:-1}" = 1 ]; then
    log "restore of the random volume"
    for t in drl swc curl; do
      [ "$t" = curl ] && [ "${CEILING:-1}" != 1 ] && continue
      case $t in
        drl) IFS='|' read -r s b c1 w <<<"$(timed restore_case drl "bench-drl-$r-$ts" "rand$r")"; tool=drl ;;
        swc) IFS='|' read -r s b c1 w <<<"$(timed restore_case swc "bench-swc-$r-$ts")"; tool=swiftclient ;;
        curl) IFS='|' read -r s b c1 w <<<"$(timed restore_case curl "bench-curl-$r-$ts")"; tool="curl (ceiling)" ;;
      esac
      row "$r" "restore (random)" "$tool" "$s" "$b" "$c1" "$w"
    done
  fi
  [ "${ONLY:-}" = random ] && { drop_containers; continue; }

  log "case 2: half-empty volume"
  half=$((bytes / 2))
  dctl snapshot delete r0 "rand$r" >/dev/null   # its copy-on-write space is not needed any more
  qemu-io -f raw -c "write -z $half $half" "$uri" >/dev/null
  dctl snapshot create r0 "half$r" >/dev/null
  cp --sparse=always "$work/rand.img" "$work/half.img"
  truncate -s "$half" "$work/half.img"; truncate -s "$bytes" "$work/half.img"
  pair "$r" half-empty half "half$r" "bench-drl-half-$r-$ts" -- "$work/half.img" "bench-swc-half-$r-$ts"

  log "case 3: 1% changed (10 extents of $ext bytes of random data), incremental"
  cmds=()
  for i in $(seq 0 9); do cmds+=(-c "write -s $work/ext$i.bin $((i * step + 4096 * (r + 3 * i))) $ext"); done
  qemu-io -f raw "${cmds[@]}" "$uri" >/dev/null
  dctl snapshot create r0 "incr$r" >/dev/null
  pair "$r" "1% changed" incr "incr$r" "bench-drl-half-$r-$ts" -- "$work/half.img" "bench-swc-half-$r-$ts"
  drop_containers
done

mkdir -p "$top/bench-results"
out="$top/bench-results/swift-$ts"
python3 - "$out" "$bytes" "$repeat" "$(uptime)" "${rows[@]}" <<'PY'
import os, statistics, sys
out, size, repeat, up, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], [r.split('|') for r in sys.argv[5:]]
med = {}
order = []
for rep, case, tool, secs, sent, cpu, wcpu in rows:
    k = (case, tool)
    if k not in med:
        med[k] = []
        order.append(k)
    med[k].append((float(secs), int(sent), float(cpu), float(wcpu)))
def m(k, i):
    return statistics.median(v[i] for v in med[k])
tools = ("drl", "swiftclient")
lines = ["# Snapshot stream to Swift: drl vs swiftclient", "",
         f"Volume {size / 2**30:.2f} GiB; one-node Swift on 127.0.0.1 (loop XFS), 2 cores shared by Swift, the client and other work; "
         f"medians of {repeat} repetitions. drl: chunk {os.environ.get('CHUNK') or 'default'}, object {os.environ.get('OBJ') or 'default'}, "
         f"parallelism {os.environ.get('PAR') or 'default'}{', daemon environment ' + repr(os.environ['DRL_ENV']) if os.environ.get('DRL_ENV') else ''}; `swift upload --segment-size 64M` (10 threads). "
         "The 1% change is 10 extents of random data; swiftclient re-uploads the volume. "
         "cpu s: CPU seconds of drl's daemon / of the swift client process during the case; swift cpu s: of Swift's proxy and object servers. "
         "restore (random): the random volume back from Swift into a file on disk, by `drl restore` (every chunk checked against its digest; cpu s of that process), `swift download` and curl GETting the 16 MiB pieces 8 at a time (the ceiling); bytes sent: bytes written; both tools' files are compared with the volume. " +
         ("Before each timed run the page cache is written back but not dropped (WARM=1): swiftclient reads its copy of the volume from memory, drl reads its disk. " if os.environ.get("WARM") == "1" else
          "Before each timed run the page cache is written back and dropped (drl reads its disk with O_DIRECT; swiftclient reads its copy of the volume from disk too). ") +
         "The tools take turns going first.", "",
         f"drl binary: {os.environ.get('DRL_BIN') or 'built from this checkout'}.", "",
         f"Load at the end: `{up.strip()}`", "",
         "drl speed-up: swiftclient's median seconds / drl's; per repetition: the same within each repetition (median, min..max).", "",
         "| case | tool | seconds | bytes sent | % of volume sent | volume MiB/s | cpu s | swift cpu s | drl speed-up | per repetition |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
per_rep = {}
for rep, case, tool, secs, sent, cpu, wcpu in rows:
    per_rep.setdefault((case, rep), {})[tool] = float(secs)
csv = ["rep,case,tool,seconds,bytes_sent,cpu_seconds,swift_cpu_seconds"] + [",".join(r) for r in rows]
for case, tool in order:
    secs, sent, cpu, wcpu = (m((case, tool), i) for i in range(4))
    up_, each = "", ""
    if tool == "drl" and (case, "swiftclient") in med:
        up_ = f"{m((case, 'swiftclient'), 0) / secs:.2f}x"
        r = sorted(v["swiftclient"] / v["drl"] for (c, _), v in per_rep.items() if c == case and "drl" in v and "swiftclient" in v)
        each = f"{statistics.median(r):.2f}x ({r[0]:.2f}..{r[-1]:.2f})"
    lines.append(f"| {case} | {tool} | {secs:.2f} | {int(sent):,} | {100 * sent / size:.2f}% | {size / secs / 2**20:.1f} | {cpu:.2f} | {wcpu:.2f} | {up_} | {each} |")
for case in ("random", "restore (random)"):
    ceil = (case, "curl (ceiling)")
    if ceil in med:
        lines += ["", f"Share of the ceiling (curl's median seconds / the tool's), {case}: " + ", ".join(
            f"{t} {m(ceil, 0) / m((case, t), 0):.0%}" for t in tools if (case, t) in med) + "."]
open(out + ".md", "w").write("\n".join(lines) + "\n")
open(out + ".csv", "w").write("\n".join(csv) + "\n")
print("\n".join(lines))
PY
log "wrote $out.md and $out.csv"
