#!/usr/bin/env bash
# The cost of TLS on the replication link (issue 14): replication goodput and CPU per GiB,
# TLS 1.3 against cleartext, in one run, on the netns testbed shaped at RATE (500 Mbit/s).
#
#   scripts/bench-tls.sh                    # 500mbit, 2 rounds of 10 s each way
#   RATE=100mbit REPEAT=3 T=15 scripts/bench-tls.sh
#   DRL_BIN=target/debug/drl scripts/bench-tls.sh   # any binary (default: a release build)
#
# Each round runs a cleartext pair then a TLS pair (same binary, same link, same volume): fio
# writes random (incompressible) data through site A's NBD export as fast as it can (256 KiB
# at QD 8, on-congestion = block), and over T seconds after a 3 s warm-up the script reads
# site B's received payload bytes and both daemons' CPU time (utime + stime from /proc).
# Goodput = payload bytes received per second; CPU per GiB = CPU seconds of each daemon per
# GiB received. Certificates are made with openssl (ECDSA P-256, as drl's tests use).
# Both daemons and fio share this machine's cores: the CPU figures include that contention;
# the ratio TLS / cleartext within a round is the number to read.
#
# Output: bench-results/tls-STAMP.md. Needs root (network namespaces, tc).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || { echo "bench-tls: needs root (network namespaces, tc)" >&2; exit 2; }
need_pkgs fio:fio ip:iproute2 tc:iproute2 jq:jq openssl:openssl python3:python3

RATE=${RATE:-500mbit} REPEAT=${REPEAT:-2} T=${T:-10}
export DRL_NS_A=${DRL_NS_A:-drl-ops-a} DRL_NS_B=${DRL_NS_B:-drl-ops-b}
export DRL_IF_A=${DRL_IF_A:-drl-ops-va} DRL_IF_B=${DRL_IF_B:-drl-ops-vb}
export DRL_ADDR_A=${DRL_ADDR_A:-198.18.6.1} DRL_ADDR_B=${DRL_ADDR_B:-198.18.6.2}
drl=$(drl_bin)
top=$(repo_root)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$top/bench-results/tls-$stamp.md
mkdir -p "$top/bench-results"
w=$(mktemp -d /tmp/drl-ops-bench-tls.XXXXXX)
PA= PB=
cleanup() {
    for p in $PA $PB; do stop_pid "$p" 3; done
    "$here/testbed.sh" down >/dev/null 2>&1 || true
    [ -n "${KEEP:-}" ] && log "kept $w" || rm -rf "$w"
}
on_exit cleanup
calc() { python3 -c "print($*)"; }
now() { date +%s.%N; }
on() { local s=$1; shift; "$drl" --config "$w/p/drl.toml" --node "site-$s" "$@"; }
st() { on "$1" status r0 --json | jq -r ".resources[0].$2"; }
cpu() { awk '{print ($14 + $15) / '"$(getconf CLK_TCK)"'}' "/proc/$1/stat"; }
poll() {
    local secs=$1 what=$2 i; shift 2
    for ((i = 0; i < secs * 10; i++)); do "$@" && return 0; sleep 0.1; done
    die "timed out after ${secs}s waiting for $what (logs in $w/p)"
}
synced() {
    on a status r0 --json | jq -e '.resources[0] | .disk == "UpToDate" and .replication == "Established"
        and .out_of_sync_bytes == 0 and .send_queue_bytes == 0' >/dev/null
}

# Certificates: a CA, site-a and site-b with their names as DNS SANs.
c=$w/certs
mkdir -p "$c"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$c/ca.key" \
    -out "$c/ca.crt" -days 2 -subj "/CN=drl bench CA" 2>/dev/null
for s in site-a site-b; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$c/$s.key" \
        -out "$c/$s.csr" -subj "/CN=$s" 2>/dev/null
    openssl x509 -req -in "$c/$s.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
        -out "$c/$s.crt" -days 2 -extfile <(printf 'subjectAltName=DNS:%s\n' "$s") 2>/dev/null
done

run_pair() { # MODE (clear|tls) — start a synced pair, measure, record "goodput cpu_a cpu_b"
    local mode=$1 keys='on-congestion = "block"' more=''
    rm -rf "$w/p" && mkdir -p "$w/p/a" "$w/p/b"
    if [ "$mode" = tls ]; then
        keys+=$'\ntls = true'
        more=$(printf '[tls]\nca = "%s"\n' "$c/ca.crt")
    fi
    pair_config "$w/p" "$DRL_ADDR_A:7789" "$DRL_ADDR_B:7789" 1GiB "$keys" "$more" >"$w/p/drl.toml"
    if [ "$mode" = tls ]; then
        for s in a b; do
            sed -i "s|^control-socket = \"$w/p/site-$s.sock\"|&\ntls-cert = \"$c/site-$s.crt\"\ntls-key = \"$c/site-$s.key\"|" "$w/p/drl.toml"
        done
    fi
    start_site "$drl" "$w/p/drl.toml" a "$DRL_NS_A"; PA=$SITE_PID
    start_site "$drl" "$w/p/drl.toml" b "$DRL_NS_B"; PB=$SITE_PID
    poll 30 "the $mode pair to connect" bash -c "[ \"\$($drl --config $w/p/drl.toml --node site-a status r0 --json | jq -r '.resources[0].connection')\" = Connected ]"
    [ "$(st a tls)" = "$([ "$mode" = tls ] && echo true || echo false)" ] || die "tls flag wrong for $mode"
    on a primary r0 --force >/dev/null
    poll 120 "the initial sync" synced
    fio --name=w --ioengine=nbd --uri="nbd+unix:///?socket=$w/p/a/r0.nbd" --rw=write --bs=256k \
        --iodepth=8 --size=1g --time_based --runtime=$((T + 4)) --refill_buffers \
        --output=/dev/null >/dev/null &
    local fpid=$! t0 t1 r0 r1 ca0 ca1 cb0 cb1
    sleep 3
    t0=$(now); r0=$(st b received_bytes); ca0=$(cpu "$PA"); cb0=$(cpu "$PB")
    sleep "$T"
    t1=$(now); r1=$(st b received_bytes); ca1=$(cpu "$PA"); cb1=$(cpu "$PB")
    wait "$fpid"
    stop_pid "$PA" 5; stop_pid "$PB" 5; PA= PB=
    local gib
    gib=$(calc "($r1 - $r0) / 2**30")
    echo "$(calc "($r1 - $r0) * 8 / ($t1 - $t0) / 1e6") $(calc "($ca1 - $ca0) / $gib") $(calc "($cb1 - $cb0) / $gib")"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
"$here/testbed.sh" up "$RATE" >/dev/null
rows=()
for ((i = 1; i <= REPEAT; i++)); do
    log "round $i/$REPEAT: cleartext"
    read -r gc ac bc < <(run_pair clear)
    log "round $i/$REPEAT: TLS"
    read -r gt at bt < <(run_pair tls)
    rows+=("| $i | $(printf %.1f "$gc") | $(printf %.1f "$gt") | $(printf %.3f "$(calc "$gt / $gc")") | $(printf %.2f "$ac") | $(printf %.2f "$at") | $(printf %.2f "$bc") | $(printf %.2f "$bt") | $(printf %.2f "$(calc "($at + $bt) / ($ac + $bc)")") |")
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
{
    echo "# TLS on the replication link: cost ($stamp)"
    echo
    echo "Link: tbf $RATE on the netns testbed; random data, 256 KiB writes at QD 8, on-congestion block,"
    echo "${T} s windows after 3 s of warm-up; binary \`$drl\`; $(nproc) CPUs; load average before"
    echo "$load_before, after $load_after (other jobs share the machine: read the ratios)."
    echo
    echo "| round | goodput clear (Mbit/s) | goodput TLS (Mbit/s) | TLS / clear | CPU s/GiB primary clear | primary TLS | secondary clear | secondary TLS | CPU TLS / clear |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} >"$out"
cat "$out"
log "wrote $out"
