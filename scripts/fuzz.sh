#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser a peer or client reaches (cargo-fuzz / libFuzzer on
# the nightly toolchain). The harnesses are src/fuzzing/ (library code: tests/fuzz_corpus.rs
# replays the corpora through them on stable); fuzz/fuzz_targets/ holds one target per harness.
#
#   scripts/fuzz.sh                    # the recorded run: every target, one after another,
#                                      # 10 million executions each (or --max-time), nice'd;
#                                      # writes bench-results/fuzz-<UTC>.md
#   scripts/fuzz.sh --runs N --max-time S --targets "repl_frames config"
#   scripts/fuzz.sh --smoke            # a short, seeded run of every target (scripts/test.sh;
#                                      # DRL_FUZZ_SMOKE_RUNS, DRL_FUZZ_SEED)
#   scripts/fuzz.sh --build            # only build the targets
#   scripts/fuzz.sh --no-build ...     # run the targets as last built
#   scripts/fuzz.sh --capture          # record real NBD clients (qemu-io, nbdinfo, nbdcopy
#                                      # against qemu-nbd) into fuzz/corpus/nbd_*/capture-*
#
# Corpora: fuzz/corpus/TARGET/ (seeds, checked in, small) is copied into
# target/fuzz/corpus/TARGET/ (the growing working corpus, not checked in); every input that
# crashed a target once is kept in fuzz/regressions/TARGET/ (checked in) once the product is
# fixed. A crash found by this script lands in target/fuzz/artifacts/TARGET/ and fails the run.
#
# Built with -s none (no AddressSanitizer: the parsers are safe Rust; ASan would halve the
# speed and rebuild every dependency) and -a (debug assertions and overflow checks on, so an
# integer overflow is a crash). Artifacts live under target/fuzz (one target directory).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"

runs=10000000
max_time=3600
targets=""
mode=run
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --max-time) max_time=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --smoke) mode=smoke; shift ;;
    --build) mode=build; shift ;;
    --no-build) build=0; shift ;;
    --capture) mode=capture; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$targets" ] || targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^drl-fuzz$')

tdir="$top/target/fuzz"
bin="$tdir/x86_64-unknown-linux-gnu/release"

if [ "$mode" = capture ]; then
  # Real clients through a logging proxy (scripts/fuzz_capture.py) to qemu-nbd.
  work=$(mktemp -d /tmp/drl-fuzz-cap.XXXXXX)
  truncate -s 1M "$work/img.raw"
  qemu-nbd -f raw -p 47611 -b 127.0.0.1 -t -x vol "$work/img.raw" & qpid=$!
  python3 "$here/fuzz_capture.py" 47612 127.0.0.1:47611 "$work/nbd" --connections 5 & ppid=$!
  trap 'kill $qpid $ppid 2>/dev/null; rm -rf "$work"' EXIT
  for _ in $(seq 50); do nbdinfo nbd://127.0.0.1:47611/vol >/dev/null 2>&1 && break; sleep 0.1; done
  u=nbd://127.0.0.1:47612/vol
  qemu-io -f raw -c 'write -P 0xab 0 64k' -c 'read -P 0xab 0 64k' -c 'write -z 64k 4k' \
    -c 'discard 128k 4k' -c 'flush' "$u" >/dev/null
  nbdinfo "$u" >/dev/null
  nbdinfo --list nbd://127.0.0.1:47612 >/dev/null
  qemu-io -f raw -c 'write -P 0x11 4096 8k' -c 'write -f 0 512' -c 'read 0 12k' "$u" >/dev/null
  nbdcopy -- "$u" null:
  wait $ppid
  python3 - "$work" "$top/fuzz/corpus" <<'EOF'
import struct, sys
work, out = sys.argv[1], sys.argv[2]
IHAVEOPT = 0x49484156454f5054
for n in range(5):
    c = open(f"{work}/nbd-{n}.c2s", "rb").read()
    i, last = 4, None
    while i + 16 <= len(c):
        magic, opt, ln = struct.unpack(">QII", c[i:i + 16])
        if magic != IHAVEOPT:
            break
        i += 16 + ln
        last = opt
        if opt in (1, 2, 7):
            break
    open(f"{out}/nbd_handshake/capture-{n}", "wb").write(c[:i])
    if c[i:]:
        open(f"{out}/nbd_transmission/capture-{n}", "wb").write(c[i:i + 20000])
EOF
  echo "captured into fuzz/corpus/nbd_handshake and fuzz/corpus/nbd_transmission"
  exit 0
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly)" >&2; exit 3
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2; exit 3
fi

build_start=$(date +%s)
if [ "$build" = 1 ]; then
  (cd fuzz && CARGO_INCREMENTAL=0 nice -n 10 cargo +nightly fuzz build -s none -a --target-dir "$tdir")
fi
build_s=$(( $(date +%s) - build_start ))
[ "$mode" = build ] && exit 0

seed_arg=()
if [ "$mode" = smoke ]; then
  # A short run per target: the seeds, the regressions, then a fixed number of mutations from
  # a fixed random seed, so the test command gives the same verdict on every fresh machine
  # (a crash it finds is found again by the next run; exploring new paths is the recorded
  # run's job). The time cap only shortens a run on a slow machine, never changes its path.
  runs=${DRL_FUZZ_SMOKE_RUNS:-150000}; max_time=${DRL_FUZZ_SMOKE_S:-60}
  seed_arg=(-seed="${DRL_FUZZ_SEED:-1}")
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
report="$top/bench-results/fuzz-$stamp.md"
rows=""
failed=""
# FUZZ_NICE=0 runs the targets at full priority (the soak's hog: scripts/test.sh --hog-cmd).
fuzz_nice=${FUZZ_NICE:-10}
total_start=$(date +%s)
for t in $targets; do
  corpus="$tdir/corpus/$t"
  arts="$tdir/artifacts/$t"
  mkdir -p "$corpus" "$arts"
  cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  seeds=(fuzz/regressions/"$t")
  [ -d "${seeds[0]}" ] || seeds=()
  log="$tdir/logs/$t-$stamp.log"
  mkdir -p "$(dirname "$log")"
  start=$(date +%s)
  rc=0
  nice -n "$fuzz_nice" "$bin/$t" "${seed_arg[@]}" -runs="$runs" -max_total_time="$max_time" -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$arts/" "$corpus" \
    "${seeds[@]}" >"$log" 2>&1 || rc=$?
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  units=$(ls "$corpus" | wc -l)
  verdict=ok
  if [ "$rc" != 0 ]; then verdict="CRASH (exit $rc, see $log, ${arts#$top/})"; failed="$failed $t"; fi
  printf '%-18s %12s execs %8s/s %5ss cov %6s corpus %5s  %s\n' "$t" "${execs:-?}" "${eps:-?}" "$secs" "${cov:-?}" "$units" "$verdict"
  rows="$rows| $t | ${execs:-?} | ${eps:-?} | $secs | ${cov:-?} | $units | ${rss:-?} | $verdict |"$'\n'
done
total_s=$(( $(date +%s) - total_start ))

if [ "$mode" = run ]; then
  mkdir -p "$top/bench-results"
  {
    echo "# Fuzzing run $stamp"
    echo
    echo "Command: \`scripts/fuzz.sh --runs $runs --max-time $max_time\` (libFuzzer via cargo-fuzz"
    echo "$(cargo fuzz --version), $(rustc +nightly --version); -s none -a: no ASan, debug"
    echo "assertions and overflow checks on). Targets ran one after another under nice -n $fuzz_nice on"
    echo "$(nproc) cores shared with other builds (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))."
    echo "Build: ${build_s} s; fuzzing: ${total_s} s. An execution is one input through the harness"
    echo "(for structure-aware targets, one whole operation sequence)."
    echo
    echo "| target | executions | execs/s | seconds | coverage (edges) | corpus | peak RSS MiB | result |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|"
    printf '%s' "$rows"
  } >"$report"
  echo "report: ${report#$top/}"
fi
if [ -n "$failed" ]; then
  echo "fuzz.sh: crashes in:$failed" >&2
  exit 1
fi
