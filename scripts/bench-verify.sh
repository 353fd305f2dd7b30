#!/usr/bin/env bash
# Online verify benchmark: two sites (their own network namespaces, joined by a veth pair
# shaped with tc) replicate a volume of random data; `drl verify` then compares the two copies
# over the thin link. For each --rate cap: how long a run takes, the volume rate it reaches, and
# how many bytes crossed the link (the veth's counters, both directions, TCP included) as a share
# of the volume. The reference row is what an admin would do by hand without it: sha256sum of
# each site's image at the same time, on its own site (no network at all, and it only says
# whether the whole volumes are equal, not which blocks differ).
# Writes bench-results/verify-<date>.{md,csv}.
#
#   scripts/bench-verify.sh                    # 1 GiB volume, 100mbit link, rates 100MiB/s and 1GiB/s
#   SIZE=4GiB LINK=20mbit RATES="50MiB/s" scripts/bench-verify.sh
#   REPEAT=3                                   # runs per row (the median is reported)
#   DRL_BIN=path                               # use this drl binary instead of a release build
#   KEEP=1                                     # keep the temp dir and the namespaces
#
# Needs root (network namespaces).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need_pkgs ip:iproute2 tc:iproute2 python3:python3 qemu-io:qemu-utils
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"

size=${SIZE:-1GiB}
link=${LINK:-100mbit}
rates=${RATES:-"100MiB/s 1GiB/s"}
repeat=${REPEAT:-1}
top=$(repo_root)
drl=$(drl_bin)
export DRL_NS_A=drlv-a DRL_NS_B=drlv-b DRL_IF_A=drlv-va DRL_IF_B=drlv-vb
export DRL_ADDR_A=198.18.1.1 DRL_ADDR_B=198.18.1.2
work=$(mktemp -d "$top/target/bench-verify.XXXXXX")
out_dir=${OUT_DIR:-$top/bench-results}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out_dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -z "${KEEP:-}" ]; then
        "$here/testbed.sh" down >/dev/null 2>&1 || true
        rm -rf "$work"
    else
        log "kept $work and the namespaces $DRL_NS_A / $DRL_NS_B"
    fi
}
trap cleanup EXIT

"$here/testbed.sh" up >/dev/null # unshaped for the initial sync
cfg=$work/drl.toml
pair_config "$work" "$DRL_ADDR_A:7789" "$DRL_ADDR_B:7789" "$size" >"$cfg"
on() { local s=$1; shift; "$drl" --config "$cfg" --node "site-$s" "$@"; }
field() { site_field "$drl" "$cfg" "$1" "$2"; }
bytes=$(python3 -c "
import re,sys
m=re.fullmatch(r'(\d+)(KiB|MiB|GiB)?','$size'); n=int(m[1]); print(n*{None:1,'KiB':1<<10,'MiB':1<<20,'GiB':1<<30}[m[2]])")

# Random data on A before the pair first meets; the initial full sync copies it to B.
mkdir -p "$work/a" "$work/b"
python3 - "$work/a/r0.img" "$bytes" <<'EOF'
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    left = size
    while left:
        n = min(left, 64 << 20)
        f.write(os.urandom(n))
        left -= n
EOF
start_site "$drl" "$cfg" a "$DRL_NS_A"; pids+=("$SITE_PID")
start_site "$drl" "$cfg" b "$DRL_NS_B"; pids+=("$SITE_PID")
for _ in $(seq 120); do [ "$(field a connection)" = Connected ] && break; sleep 0.25; done
on a primary r0 --force >/dev/null
log "initial sync of $size (unshaped link)"
for _ in $(seq 1200); do
    [ "$(field a replication)/$(field b disk)/$(field a out_of_sync_bytes)" = "Established/UpToDate/0" ] && break
    sleep 0.5
done
[ "$(field b disk)" = UpToDate ] || die "initial sync did not finish"
"$here/testbed.sh" shape "$link" >/dev/null
log "link shaped to $link"

wire() { # bytes sent by both veth ends so far
    local a b
    a=$(ip -n "$DRL_NS_A" -s -j link show "$DRL_IF_A" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["bytes"])')
    b=$(ip -n "$DRL_NS_B" -s -j link show "$DRL_IF_B" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["bytes"])')
    echo $((a + b))
}
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

csv=$out_dir/verify-$stamp.csv
md=$out_dir/verify-$stamp.md
echo "row,rate_cap,seconds,volume_mib_s,wire_bytes,wire_share_pct,out_of_sync_bytes" >"$csv"
rows=()
for rate in $rates; do
    secs=() wires=() oos=
    for _ in $(seq "$repeat"); do
        sync; echo 3 >/proc/sys/vm/drop_caches
        w0=$(wire)
        report=$(on a verify r0 --json --rate "$rate")
        w1=$(wire)
        secs+=("$(python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])' <<<"$report")")
        oos=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["out_of_sync_bytes"])' <<<"$report")
        wires+=($((w1 - w0)))
    done
    s=$(median "${secs[@]}") wb=$(median "${wires[@]}")
    mibs=$(python3 -c "print(round($bytes / 1048576 / $s, 1))")
    share=$(python3 -c "print(round($wb * 100 / $bytes, 3))")
    echo "drl verify,$rate,$s,$mibs,${wb%.*},$share,$oos" >>"$csv"
    rows+=("| drl verify | $rate | $s | $mibs | ${wb%.*} | $share% | $oos |")
    log "drl verify --rate $rate: $s s, $mibs MiB/s, ${wb%.*} bytes on the wire ($share%), out of sync $oos"
done
# By hand: sha256sum of both images at the same time, each on its own site.
secs=()
for _ in $(seq "$repeat"); do
    sync; echo 3 >/proc/sys/vm/drop_caches
    t0=$(date +%s.%N)
    sha256sum "$work/a/r0.img" >"$work/a.sum" & h1=$!
    sha256sum "$work/b/r0.img" >"$work/b.sum" & h2=$!
    wait $h1 $h2
    secs+=("$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")")
done
s=$(median "${secs[@]}")
mibs=$(python3 -c "print(round($bytes / 1048576 / $s, 1))")
echo "sha256sum both images,,$s,$mibs,0,0," >>"$csv"
rows+=("| sha256sum of both images, in parallel (by hand; equal or not, no block list) | - | $s | $mibs | 0 | 0% | - |")

{
    echo "# Online verify: $size of random data, link $link, $(nproc) CPUs, $(date -u)"
    echo
    echo "drl: $drl ($(cd "$top" && git rev-parse --short HEAD 2>/dev/null || echo unknown)); median of $repeat run(s); page cache dropped before each run."
    echo
    echo "| run | --rate | seconds | volume MiB/s | bytes on the link | share of the volume | out of sync |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
} >"$md"
cat "$md"
log "wrote $md and $csv"
