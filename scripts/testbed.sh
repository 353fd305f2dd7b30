#!/usr/bin/env bash
# Two-site testbed on one machine: network namespaces drl-a and drl-b joined by a veth pair,
# the link shaped with tc (tbf on both directions), and ways to cut and restore it.
#
#   scripts/testbed.sh up [RATE]        create (or reset) the two sites; RATE like 100mbit (default: unshaped)
#   scripts/testbed.sh shape RATE|off   change the link rate (tbf) on both directions
#   scripts/testbed.sh cut              take the link down (both sides see carrier loss)
#   scripts/testbed.sh cut --silent     drop every packet with nftables: the link looks up, nothing passes
#   scripts/testbed.sh restore          undo either cut
#   scripts/testbed.sh exec a|b CMD...  run CMD inside site a or b
#   scripts/testbed.sh status           show addresses, qdiscs and counters
#   scripts/testbed.sh down             remove everything
#
# Site a is 198.18.0.1, site b is 198.18.0.2 (RFC 2544's range for network benchmarks: these
# addresses exist only inside the two namespaces). netem is not in this kernel, so the link has
# no added delay or loss; where latency matters, it has to be added in userspace.
#
# Everything global has an override, so that two testbeds can coexist (tests and benchmarks use
# their own): DRL_NS_A / DRL_NS_B (namespaces, default drl-a / drl-b), DRL_IF_A / DRL_IF_B
# (veth ends, default drl-va / drl-vb), DRL_ADDR_A / DRL_ADDR_B (the sites' addresses). The
# veth ends are created directly inside their namespaces, and the nft table of `cut --silent`
# lives in them too, so nothing lands in the root namespace.
# Needs root (network namespaces); without it, says so and exits 2.
set -euo pipefail
NS_A=${DRL_NS_A:-drl-a}
NS_B=${DRL_NS_B:-drl-b}
IF_A=${DRL_IF_A:-drl-va}
IF_B=${DRL_IF_B:-drl-vb}
ADDR_A=${DRL_ADDR_A:-198.18.0.1}
ADDR_B=${DRL_ADDR_B:-198.18.0.2}

if [ "$(id -u)" != 0 ]; then
  echo "testbed: needs root to create network namespaces (run as root, or use loopback tests)" >&2
  exit 2
fi
. "$(dirname "$0")/lib.sh"
need_pkgs ip:iproute2 tc:iproute2 ping:iputils-ping nft:nftables

ns_of() { case "$1" in a) echo "$NS_A" ;; b) echo "$NS_B" ;; *) echo "testbed: site must be a or b, not $1" >&2; exit 2 ;; esac; }
if_of() { case "$1" in a) echo "$IF_A" ;; b) echo "$IF_B" ;; esac; }

# tbf burst: 4 ms worth of bytes at the rate, at least 32 KiB (below ~1 jiffy of bytes, tbf
# cannot reach its rate). The queue holds at most 100 ms of data.
shape_one() {
  local site=$1 rate=$2 ns dev
  ns=$(ns_of "$site"); dev=$(if_of "$site")
  if [ "$rate" = off ]; then
    ip -n "$ns" link set "$dev" up
    tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
    return
  fi
  local bps
  bps=$(python3 - "$rate" <<'PY'
import re, sys
m = re.fullmatch(r'(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)?', sys.argv[1].lower())
if not m: sys.exit("bad rate " + sys.argv[1] + " (use e.g. 100mbit)")
n = float(m.group(1)) * {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}[m.group(2)]
if m.group(3) == 'bps': n *= 8
print(int(n))
PY
)
  local burst=$(( bps / 8 / 250 )); [ "$burst" -lt 32768 ] && burst=32768
  tc -n "$ns" qdisc replace dev "$dev" root tbf rate "${bps}bit" burst "$burst" latency 100ms
}

up() {
  local rate=${1:-off}
  down_quiet
  ip netns add "$NS_A"
  ip netns add "$NS_B"
  ip link add "$IF_A" netns "$NS_A" type veth peer name "$IF_B" netns "$NS_B"
  ip -n "$NS_A" addr add "$ADDR_A/24" dev "$IF_A"
  ip -n "$NS_B" addr add "$ADDR_B/24" dev "$IF_B"
  for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
  ip -n "$NS_A" link set "$IF_A" up
  ip -n "$NS_B" link set "$IF_B" up
  shape_one a "$rate"; shape_one b "$rate"
  ip netns exec "$NS_A" ping -c1 -W2 "$ADDR_B" >/dev/null || { echo "testbed: sites cannot reach each other" >&2; exit 1; }
  echo "testbed up: $NS_A ($ADDR_A) <-> $NS_B ($ADDR_B), link rate $rate"
}

down_quiet() {
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
}

cut() {
  if [ "${1:-}" = --silent ]; then
    command -v nft >/dev/null || { echo "testbed: nft missing (apt-get install nftables)" >&2; exit 2; }
    for ns in "$NS_A" "$NS_B"; do
      ip netns exec "$ns" nft -f - <<'NFT'
table inet drlcut {
  chain in { type filter hook input priority -10; policy drop; iifname "lo" accept; }
  chain out { type filter hook output priority -10; policy drop; oifname "lo" accept; }
}
NFT
    done
    echo "link cut silently (nft drop in both sites)"
  else
    ip -n "$NS_A" link set "$IF_A" down
    echo "link down"
  fi
}

restore() {
  for ns in "$NS_A" "$NS_B"; do ip netns exec "$ns" nft delete table inet drlcut 2>/dev/null || true; done
  ip -n "$NS_A" link set "$IF_A" up
  ip -n "$NS_B" link set "$IF_B" up
  local i
  for i in $(seq 50); do
    ip netns exec "$NS_A" ping -c1 -W1 "$ADDR_B" >/dev/null 2>&1 && { echo "link restored"; return; }
    sleep 0.1
  done
  echo "testbed: link still not passing traffic after restore" >&2; exit 1
}

cmd=${1:-status}; shift || true
case "$cmd" in
  up) up "$@" ;;
  down) down_quiet; echo "testbed down" ;;
  shape) shape_one a "${1:?rate}"; shape_one b "$1"; echo "link rate $1" ;;
  cut) cut "$@" ;;
  restore) restore ;;
  exec) site=${1:?site a or b}; shift; exec ip netns exec "$(ns_of "$site")" "$@" ;;
  status)
    for s in a b; do
      ns=$(ns_of "$s"); echo "== site $s ($ns)"
      ip -n "$ns" -br addr 2>/dev/null || echo "  (absent)"
      tc -n "$ns" -s qdisc show dev "$(if_of "$s")" 2>/dev/null || true
    done ;;
  *) echo "usage: $0 up [RATE] | shape RATE|off | cut [--silent] | restore | exec a|b CMD | status | down" >&2; exit 2 ;;
esac
