#!/usr/bin/env bash
# The long run of the deterministic replication simulator (tests/sim): many more seeds than
# the test suite's 2000, in chunks, each chunk a fresh base so no seed runs twice.
#
#   scripts/sim.sh                 # 100000 seeds from 1 (release build)
#   SEEDS=1000000 BASE=5000000 scripts/sim.sh
#   CHUNK=20000 scripts/sim.sh     # seeds per test run
#
# A failing seed is printed with its replay command:
#   DRL_SIM_SEED=N cargo test --release --test sim replay -- --nocapture
# which runs that seed alone and prints the trace of its last steps.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(repo_root)"

SEEDS=${SEEDS:-100000}
BASE=${BASE:-1}
CHUNK=${CHUNK:-10000}

cargo test --release --test sim --no-run
start=$(date +%s)
base=$BASE
end=$((BASE + SEEDS))
while ((base < end)); do
    n=$((end - base < CHUNK ? end - base : CHUNK))
    log "seeds $base..$((base + n - 1))"
    out=$(mktemp /tmp/drl-sim-long.XXXXXX)
    rc=0
    DRL_SIM_BASE=$base DRL_SIM_SEEDS=$n \
        cargo test --release --test sim random_histories -- --nocapture >"$out" 2>&1 || rc=$?
    grep -E 'seeds in|simulation failed|replay:' "$out" >&2 || true
    rm -f "$out"
    ((rc == 0)) || die "a seed failed in $base..$((base + n - 1)) (see above)"
    base=$((base + n))
done
log "$SEEDS seeds passed in $(($(date +%s) - start)) s"
