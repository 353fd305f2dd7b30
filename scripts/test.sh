#!/usr/bin/env bash
# Run drl's whole test suite on a fresh machine: install what the tests need (Debian packages),
# start a real one-node Swift on 127.0.0.1:8080 and a one-node OpenStack (Keystone :5050, Cinder,
# Heat, Nova fake; scripts/openstack-aio.sh), run every test of the workspace, stop both.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -- FILTER  # only tests whose name matches FILTER (passed to cargo test)
#   scripts/test.sh --repeat 10 --hogs 1
#                              # the soak: the suite ten times in a row, each run beside one CPU
#                              # hog (`yes >/dev/null`), stopping at the first red run; a table of
#                              # the runs (passed, failed, seconds, load) goes to
#                              # bench-results/suite-soak-<date>.md (issue 12's "green ten times
#                              # in a row under a CPU hog"). The fuzz smoke runs once, after.
#   scripts/test.sh --repeat 10 --hogs 1 --hog-cmd 'FUZZ_NICE=0 scripts/fuzz.sh --no-build ...'
#                              # the same with another CPU-bound hog (here a long fuzz run of
#                              # one target, so the soak's machine time also fuzzes)
#   scripts/test.sh --repeat 10 --hogs 0 --hog-pid PID
#                              # the hog is a process started apart (it outlives the soak); the
#                              # report names it and says after each run whether it still ran
#
# Needs root for apt-get, network namespaces and the Swift loop mount; without root the tests that
# need it say so and fail clearly rather than pretending to pass.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"
. "$here/lib.sh"

# protoc builds etcd-client's gRPC code (cargo needs it before the first build); etcd and
# etcdctl run the three-site detection testbed (tests/detect_*.rs, scripts/detect-testbed.sh);
# socat bridges the host's cloud into a site's namespace (detect-testbed.sh bridge-cloud:
# tests/dr_autofail.rs, tests/drill.rs; the drill installs python3-matplotlib for its plot).
need_pkgs qemu-io:qemu-utils qemu-storage-daemon:qemu-utils nbdinfo:libnbd-bin nbdcopy:libnbd-bin \
  fio:fio tc:iproute2 nft:nftables ping:iputils-ping protoc:protobuf-compiler etcd:etcd-server \
  etcdctl:etcd-client prometheus:prometheus promtool:prometheus curl:curl \
  systemd-analyze:systemd dpkg-deb:dpkg groff:groff-base lintian:lintian \
  unshare:util-linux python3:python3 socat:socat
# tests/ops_deb.rs packs the .deb with cargo-deb (scripts/build-deb.sh pins its version).
cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --version 3.8.0 --locked

if [ "${DRL_SKIP_SWIFT:-0}" != 1 ]; then
  "$here/swift-aio.sh" start --keystone
  on_exit '"$here/swift-aio.sh" stop'
fi
# The DR orchestrator's tests (tests/dr_*.rs) run against a real Keystone + Cinder + Heat + Nova
# (fake driver) from Debian's packages on 127.0.0.1 (Keystone on :5050, apart from swift-aio's
# on :5000). DRL_SKIP_OPENSTACK=1 skips starting it: the dr_* tests then fail, saying so.
if [ "${DRL_SKIP_OPENSTACK:-0}" != 1 ]; then
  "$here/openstack-aio.sh" install --nova
  on_exit '"$here/openstack-aio.sh" stop'
  "$here/openstack-aio.sh" start --nova
fi

repeat=1
hogs=0
hog_cmd='yes >/dev/null'
hog_args=
hog_pids=()
while [ $# -gt 0 ]; do
  case $1 in
    --repeat) repeat=$2; shift 2 ;;
    --hogs) hogs=$2; shift 2 ;;
    --hog-cmd) hog_cmd=$2; hog_args="--hog-cmd '$2'"; shift 2 ;;
    --hog-pid) hog_pids+=("$2"); shift 2 ;;
    --) break ;;
    *) echo "test.sh: unknown argument $1 (usage: scripts/test.sh [--repeat N] [--hogs K] [--hog-cmd CMD] [--hog-pid PID] [-- FILTER])" >&2; exit 2 ;;
  esac
done
case "$repeat$hogs" in *[!0-9]*) echo "test.sh: --repeat and --hogs take whole numbers" >&2; exit 2 ;; esac
filter=()
if [ "${1:-}" = "--" ]; then shift; filter=("$@"); fi
# The suite runs in two lanes side by side, each running its tests two at a time (the machine
# has 2 cores and several tests start real daemons):
#   cloud: the tests against the all-in-one OpenStack and Swift (below), which mostly wait on
#          Keystone, Cinder, Heat and Swift;
#   local: every other test binary, then kernel-glue's and drbd-compat's tests and the doc tests.
# Nothing is shared across lanes: test ports come from free_port's per-process range and are
# checked with a bind, namespaces carry each test's tag (drl-st-TAG-*, drl-det-TAG-*), and only
# the cloud lane touches Swift containers and cloud resources. The two lanes together take a
# little over half the wall time of one after the other. Each lane's output goes to its own log,
# printed when the suite ends.
#   solo:  after both lanes, the tests whose contract is a deadline or a rate (the flap storm
#          converges within 10 s of the last flap; the shaper's classes get their shares while
#          their senders keep the link busy): they run beside nothing but what the caller runs
#          (a soak's hog), as they did before the lanes.
cloud_tests=(dr_recover dr_group dr_errors dr_autofail drill swift_stream swift_faults snapshot_stream)
solo_tests=(repl_storms shaping_testbed)
run_suite() { # LOGDIR: both lanes; their logs LOGDIR/{cloud,local}.log; fails if either failed
  local dir=$1 t lane pid cloud_args=() local_args=() solo_args=() rc=0 pid_cloud pid_local t0
  mkdir -p "$dir"
  for t in tests/*.rs tests/*/main.rs; do
    t=${t#tests/}; t=${t%.rs}; t=${t%/main}
    if [[ " ${cloud_tests[*]} " == *" $t "* ]]; then cloud_args+=(--test "$t")
    elif [[ " ${solo_tests[*]} " == *" $t "* ]]; then solo_args+=(--test "$t")
    else local_args+=(--test "$t"); fi
  done
  t0=$(date +%s)
  cargo test -p drl --no-fail-fast "${cloud_args[@]}" -- --test-threads=2 "${filter[@]}" \
    >"$dir/cloud.log" 2>&1 &
  pid_cloud=$!
  (
    r=0
    cargo test -p drl --no-fail-fast --lib --bins "${local_args[@]}" -- --test-threads=2 "${filter[@]}" || r=1
    cargo test -p kernel-glue -p drbd-compat --no-fail-fast -- --test-threads=2 "${filter[@]}" || r=1
    cargo test --workspace --doc --no-fail-fast -- --test-threads=2 "${filter[@]}" || r=1
    exit $r
  ) >"$dir/local.log" 2>&1 &
  pid_local=$!
  for lane in local cloud; do
    pid=pid_$lane
    if wait "${!pid}"; then t=ok; else t=FAILED; rc=1; fi
    echo "test.sh: lane $lane $t after $(( $(date +%s) - t0 ))s (log $dir/$lane.log)"
  done
  if cargo test -p drl --no-fail-fast "${solo_args[@]}" -- --test-threads=2 "${filter[@]}" \
    >"$dir/solo.log" 2>&1; then t=ok; else t=FAILED; rc=1; fi
  echo "test.sh: solo $t after $(( $(date +%s) - t0 ))s (log $dir/solo.log)"
  return $rc
}
# suite_counts LOG... -> "passed failed ignored" summed over the logs' `test result:` lines
suite_counts() {
  awk '/^test result:/ { for (i = 1; i <= NF; i++) {
      if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1);
      if ($(i) ~ /^ignored;?$/) g += $(i-1) } } END { print p+0, f+0, g+0 }' "$@"
}
# Build what the lanes run first (the packages apart resolve features apart: kernel-glue's tests
# are their own build), so neither lane waits on the other's build.
cargo test -p drl --no-run
cargo test -p kernel-glue -p drbd-compat --no-run
if [ "$repeat" -le 1 ] && [ "$hogs" -eq 0 ] && [ ${#hog_pids[@]} -eq 0 ]; then
  dir="$top/target/suite/$(date -u +%Y%m%dT%H%M%SZ)"
  rc=0
  run_suite "$dir" || rc=$?
  for lane in local cloud solo; do
    echo "===== $lane ($dir/$lane.log) ====="
    cat "$dir/$lane.log"
  done
  read -r passed failed ignored < <(suite_counts "$dir/local.log" "$dir/cloud.log" "$dir/solo.log")
  echo "test.sh: $passed passed, $failed failed, $ignored ignored"
  if [ "$rc" != 0 ]; then
    grep -hE '^test .* FAILED$|^    [a-z_:]+$|panicked at' "$dir/local.log" "$dir/cloud.log" "$dir/solo.log" | head -40 || true
    exit 1
  fi
else
  for _ in $(seq "$hogs"); do
    # Its own process group, so that a hog that forks (a fuzzer) goes with it.
    setsid bash -c "$hog_cmd" </dev/null &
    on_exit "kill -- -$! 2>/dev/null || true"
  done
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$top/bench-results" "$top/target/soak"
  report="$top/bench-results/suite-soak-$stamp.md"
  {
    echo "# The suite $repeat times in a row beside $(( hogs + ${#hog_pids[@]} )) CPU hog(s)"
    echo
    echo "- started (UTC): $stamp, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    if [ "$hogs" -gt 0 ]; then
      echo "- host: $(nproc) CPUs; $hogs hog(s) of its own, each \`$hog_cmd\`, started after the build"
    else
      echo "- host: $(nproc) CPUs; no hog of its own"
    fi
    for p in "${hog_pids[@]}"; do
      echo "- a hog started apart, pid $p (nice $(ps -o ni= -p "$p" 2>/dev/null | tr -d ' '); its children: $(ps -o comm=,ni= --ppid "$p" 2>/dev/null | tr -s ' \n' ' ')): \`$(tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null || echo 'NOT RUNNING')\`"
    done
    echo "- the suite in two lanes side by side (cloud and local, each two tests at a time), then the solo tests (${solo_tests[*]})"
    echo "- re-run: \`scripts/test.sh --repeat $repeat --hogs $hogs${hog_args:+ $hog_args}${hog_pids[*]:+ --hog-pid ${hog_pids[*]}}${filter[*]:+ -- ${filter[*]}}\`"
    echo
    echo "| run | passed | failed | ignored | seconds | load (1 min) at the end | hogs started apart still running |"
    echo "|---:|---:|---:|---:|---:|---:|---|"
  } >"$report"
  green=0
  for i in $(seq "$repeat"); do
    log="$top/target/soak/run-$stamp-$i"
    start=$(date +%s)
    rc=0
    run_suite "$log" || rc=$?
    secs=$(( $(date +%s) - start ))
    read -r passed failed ignored < <(suite_counts "$log/local.log" "$log/cloud.log" "$log/solo.log")
    alive=
    for p in "${hog_pids[@]}"; do
      if kill -0 "$p" 2>/dev/null; then alive+="$p yes "; else alive+="$p NO "; fi
    done
    echo "| $i | $passed | $failed | $ignored | $secs | $(cut -d' ' -f1 /proc/loadavg) | ${alive:--} |" >>"$report"
    echo "soak run $i of $repeat: $passed passed, $failed failed in ${secs}s (log $log)"
    if [ "$rc" != 0 ]; then
      grep -hE '^test .* FAILED$|^    [a-z_:]+$|panicked at' "$log"/*.log | head -40 || true
      { echo; echo "Run $i failed (exit $rc); its log: \`$log\`. Green in a row before it: $green."; } >>"$report"
      echo "test.sh: soak run $i failed; report $report" >&2
      exit 1
    fi
    green=$((green + 1))
  done
  { echo; echo "All $repeat runs green."; } >>"$report"
  echo "soak: $repeat of $repeat green; report $report"
fi

# Fuzzing: tests/fuzz_corpus.rs (above, stable) replayed every seed and crash regression
# through the harnesses. A short coverage-guided run of every target needs the nightly
# toolchain and cargo-fuzz; installing them and building the instrumented dependency tree
# takes longer than this suite can spare on a fresh machine, so it runs where they are
# (the first run on a machine still builds the instrumented dependency tree: DRL_SKIP_FUZZ=1).
if [ ${#filter[@]} -gt 0 ]; then
  echo "NOTE: fuzz smoke run not done: a test filter was given"
elif [ "${DRL_SKIP_FUZZ:-0}" = 1 ]; then
  echo "NOTE: fuzz smoke run not done: DRL_SKIP_FUZZ=1"
elif rustup toolchain list 2>/dev/null | grep -q '^nightly' && cargo fuzz --version >/dev/null 2>&1; then
  "$here/fuzz.sh" --smoke
else
  echo "NOTE: fuzz smoke run not done: no nightly toolchain or cargo-fuzz here (the corpora" \
    "and regressions ran on stable in tests/fuzz_corpus.rs; scripts/fuzz.sh --smoke needs" \
    "rustup toolchain install nightly && cargo install cargo-fuzz)"
fi
