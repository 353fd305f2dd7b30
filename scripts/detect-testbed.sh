#!/usr/bin/env bash
# Three-site testbed for failure detection: network namespaces for site a, site b and a witness
# w, each joined to a small router namespace r by a veth pair, and one etcd member per site.
#
#   scripts/detect-testbed.sh up                   create (or reset) the four namespaces
#   scripts/detect-testbed.sh etcd SITE DIR        run SITE's etcd member in the foreground (a, b or w;
#                                                  data in DIR; heartbeat 100 ms, election 1 s, pre-vote)
#   scripts/detect-testbed.sh cut X-Y              drop everything between sites X and Y (nft, silent)
#   scripts/detect-testbed.sh heal [X-Y]           undo one cut, or every cut and isolation
#   scripts/detect-testbed.sh isolate SITE         drop everything to and from SITE (nft, silent)
#   scripts/detect-testbed.sh loss SITE|X-Y PCT    drop PCT % of the packets to and from SITE, or
#                                                  between X and Y, at random (nft numgen; no netem)
#   scripts/detect-testbed.sh kill-site SITE       kill -9 every process in SITE's namespace, link down
#                                                  (prints killed_unix_ms=MS, the instant of the kill)
#   scripts/detect-testbed.sh revive-site SITE     link up again (processes are the caller's)
#   scripts/detect-testbed.sh flap X-Y SECONDS [PERIOD_MS]   cut and heal every PERIOD_MS (300)
#   scripts/detect-testbed.sh slow SITE RATE|off   shape the router's link towards SITE (tc tbf, e.g.
#                                                  16kbit: a site that answers slowly)
#   scripts/detect-testbed.sh exec SITE CMD...     run CMD inside SITE
#   scripts/detect-testbed.sh addr SITE            print SITE's address
#   scripts/detect-testbed.sh bridge-cloud SITE [AUTH_URL]
#                                                  the host's OpenStack (scripts/openstack-aio.sh)
#                                                  on 127.0.0.1 inside SITE: every port of the
#                                                  Keystone catalog (AUTH_URL's own included)
#                                                  relayed by socat through a Unix socket
#   scripts/detect-testbed.sh bridge-swift SITE [PORT]
#                                                  the host's Swift (scripts/swift-aio.sh, 127.0.0.1:
#                                                  PORT, 8080) served at SITE's own address: the
#                                                  other sites reach it through the router (and
#                                                  its shaping), as a Swift at that site
#   scripts/detect-testbed.sh unbridge-cloud [SITE]  stop those relays (down does it too)
#   scripts/detect-testbed.sh down                 remove everything
#
# Addresses (198.19.77.0/24, RFC 2544's benchmarking range; they exist only inside the
# namespaces, so several testbeds with different tags can run at once): site a 198.19.77.2
# (router .1, /28), site b 198.19.77.18 (router .17), witness 198.19.77.34 (router .33).
# DRL_DET_TAG (default tb) names everything: namespaces drl-det-TAG-{a,b,w,r}; veth ends are
# created inside their namespaces and the nft table lives in the router, so nothing lands in
# the root namespace. Needs root; without it, says so and exits 2.
#
# The cloud bridge: the all-in-one cloud listens on the host's 127.0.0.1 (Keystone :5050,
# Cinder :8776, Heat :8004, Nova, Placement, Neutron) and its catalog names those URLs, so a
# daemon inside a site's namespace could not reach it. Unix sockets are not scoped by network
# namespace: for each port, one socat on the host listens on /run/drl-det-TAG-cloud/SITE-PORT.sock
# and connects to 127.0.0.1:PORT, one inside SITE listens on its own 127.0.0.1:PORT and connects
# to that socket. The cloud's bind addresses and catalog stay as they are; the catalog's URLs
# work unchanged inside SITE. Credentials for the catalog: OS_USERNAME, OS_PASSWORD,
# OS_PROJECT_NAME, else the all-in-one's (admin / drl-admin-pw / admin).
set -euo pipefail
TAG=${DRL_DET_TAG:-tb}
P="drl-det-$TAG"
R="$P-r"

if [ "$(id -u)" != 0 ]; then
  echo "detect-testbed: needs root to create network namespaces" >&2
  exit 2
fi
. "$(dirname "$0")/lib.sh"
need_pkgs ip:iproute2 tc:iproute2 nft:nftables etcd:etcd-server ping:iputils-ping

ns_of() { case "$1" in a | b | w) echo "$P-$1" ;; *) die "site must be a, b or w, not $1" ;; esac; }
net_of() { case "$1" in a) echo 0 ;; b) echo 16 ;; w) echo 32 ;; esac; }
addr_of() { ns_of "$1" >/dev/null; echo "198.19.77.$(($(net_of "$1") + 2))"; }
subnet_of() { echo "198.19.77.$(net_of "$1")/28"; }
name_of() { case "$1" in a) echo site-a ;; b) echo site-b ;; w) echo witness ;; esac; }

down_quiet() {
  local s
  for s in a b w r; do ip netns del "$P-$s" 2>/dev/null || true; done
}

up() {
  down_quiet
  ip netns add "$R"
  ip -n "$R" link set lo up
  ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
  local s ns n
  for s in a b w; do
    ns=$(ns_of "$s")
    n=$(net_of "$s")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "r$s" netns "$R" type veth peer name eth0 netns "$ns"
    ip -n "$R" addr add "198.19.77.$((n + 1))/28" dev "r$s"
    ip -n "$ns" addr add "198.19.77.$((n + 2))/28" dev eth0
    ip -n "$R" link set "r$s" up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "198.19.77.$((n + 1))"
  done
  # The cut rules live in the router's namespace.
  ip netns exec "$R" nft -f - <<EOF
table inet drl_det {
  chain forward { type filter hook forward priority 0; policy accept; }
}
EOF
  for s in b w; do
    ip netns exec "$(ns_of a)" ping -c1 -W2 "$(addr_of "$s")" >/dev/null ||
      die "site a cannot reach $s through the router"
  done
  log "up: $(ns_of a) $(addr_of a), $(ns_of b) $(addr_of b), $(ns_of w) $(addr_of w), router $R"
}

rule() { ip netns exec "$R" nft "$@"; }

cut() {
  local x=${1%-*} y=${1#*-}
  ns_of "$x" >/dev/null; ns_of "$y" >/dev/null
  rule add rule inet drl_det forward ip saddr "$(subnet_of "$x")" ip daddr "$(subnet_of "$y")" drop comment "\"cut $x-$y\""
  rule add rule inet drl_det forward ip saddr "$(subnet_of "$y")" ip daddr "$(subnet_of "$x")" drop comment "\"cut $x-$y\""
}

heal() {
  if [ -z "${1:-}" ]; then
    rule flush chain inet drl_det forward
    return
  fi
  local h
  for h in $(rule -a list chain inet drl_det forward | grep -F "\"cut $1\"" | sed 's/.*# handle //'); do
    rule delete rule inet drl_det forward handle "$h"
  done
}

isolate() {
  ns_of "$1" >/dev/null
  rule add rule inet drl_det forward ip saddr "$(subnet_of "$1")" drop comment "\"isolate $1\""
  rule add rule inet drl_det forward ip daddr "$(subnet_of "$1")" drop comment "\"isolate $1\""
}

loss() {
  local what=$1 pct=$2 x y
  case "$pct" in '' | *[!0-9]*) die "loss: PCT must be a whole number 0..100, not '$pct'" ;; esac
  [ "$pct" -le 100 ] || die "loss: PCT must be at most 100, not $pct"
  if [ "${what#*-}" != "$what" ]; then
    x=${what%-*} y=${what#*-}
    ns_of "$x" >/dev/null; ns_of "$y" >/dev/null
    rule add rule inet drl_det forward ip saddr "$(subnet_of "$x")" ip daddr "$(subnet_of "$y")" numgen random mod 100 \< "$pct" drop comment "\"loss $what\""
    rule add rule inet drl_det forward ip saddr "$(subnet_of "$y")" ip daddr "$(subnet_of "$x")" numgen random mod 100 \< "$pct" drop comment "\"loss $what\""
  else
    ns_of "$what" >/dev/null
    rule add rule inet drl_det forward ip saddr "$(subnet_of "$what")" numgen random mod 100 \< "$pct" drop comment "\"loss $what\""
    rule add rule inet drl_det forward ip daddr "$(subnet_of "$what")" numgen random mod 100 \< "$pct" drop comment "\"loss $what\""
  fi
}

kill_site() {
  local ns pids
  ns=$(ns_of "$1")
  pids=$(ip netns pids "$ns" || true)
  # The instant of the kill, for benchmarks (this script's own start-up is not part of it).
  echo "killed_unix_ms=$(date +%s%3N)"
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
  ip -n "$R" link set "r$1" down
}

flap() {
  local pair=$1 secs=$2 period=${3:-300} end
  end=$(($(date +%s%N) / 1000000 + secs * 1000))
  while [ "$(($(date +%s%N) / 1000000))" -lt "$end" ]; do
    cut "$pair"
    sleep "$(awk "BEGIN{print $period/1000}")"
    heal "$pair"
    sleep "$(awk "BEGIN{print $period/1000}")"
  done
}

CLOUD_DIR="/run/$P-cloud"

# catalog_ports AUTH_URL: the loopback ports of AUTH_URL and of every endpoint in its catalog.
catalog_ports() {
  python3 - "$1" "${OS_USERNAME:-admin}" "${OS_PASSWORD:-drl-admin-pw}" "${OS_PROJECT_NAME:-admin}" <<'PY'
import json, sys, urllib.parse, urllib.request
url, user, pw, proj = sys.argv[1:]
dom = {"name": "Default"}
body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": dom, "password": pw}}},
                 "scope": {"project": {"name": proj, "domain": dom}}}}
req = urllib.request.Request(url.rstrip("/") + "/auth/tokens", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
try:
    cat = json.load(urllib.request.urlopen(req, timeout=10))["token"]["catalog"]
except Exception as e:
    sys.exit(f"no catalog from {url} ({e}): is the cloud running? (scripts/openstack-aio.sh start --nova)")
ports = set()
for u in [url] + [e["url"] for s in cat for e in s["endpoints"]]:
    p = urllib.parse.urlsplit(u)
    if p.hostname in ("127.0.0.1", "localhost"):
        ports.add(p.port or (443 if p.scheme == "https" else 80))
    else:
        print(f"detect-testbed: {u} is not on the host's loopback: not bridged", file=sys.stderr)
print(" ".join(map(str, sorted(ports))))
PY
}

# relay NAME NS PORT BIND LOG: the host's 127.0.0.1:PORT at BIND:PORT inside NS, through the
# Unix socket $CLOUD_DIR/NAME.sock; pid files NAME.host.pid and NAME.ns.pid. setsid: each relay
# leads its own process group (its forked connections included), so unbridge stops exactly
# it; no inherited descriptors, so a caller reading our output is not held open.
relay() {
  local name=$1 ns=$2 port=$3 bind=$4 logf=$5 sock="$CLOUD_DIR/$1.sock"
  setsid socat "UNIX-LISTEN:$sock,fork,unlink-early,mode=600" "TCP:127.0.0.1:$port" \
    </dev/null >>"$logf" 2>&1 &
  pidfile_write "$CLOUD_DIR/$name.host.pid" $!
  setsid ip netns exec "$ns" socat "TCP-LISTEN:$port,bind=$bind,fork,reuseaddr" "UNIX-CONNECT:$sock" \
    </dev/null >>"$logf" 2>&1 &
  pidfile_write "$CLOUD_DIR/$name.ns.pid" $!
}

bridge_cloud() {
  local s=$1 url=${2:-http://127.0.0.1:5050/v3} ns ports port i code
  ns=$(ns_of "$s")
  need_pkgs socat:socat curl:curl python3:python3
  ports=$(catalog_ports "$url") || die "cannot bridge the cloud into $ns"
  unbridge_cloud "$s"
  mkdir -p "$CLOUD_DIR"
  for port in $ports; do relay "$s-$port" "$ns" "$port" 127.0.0.1 "$CLOUD_DIR/$s.log"; done
  # Ready when every port answers HTTP from inside the namespace (the whole path: listener
  # in the site, socket, relay on the host, the service).
  for port in $ports; do
    for ((i = 0; ; i++)); do
      code=$(ip netns exec "$ns" curl -s -o /dev/null -m 3 -w '%{http_code}' "http://127.0.0.1:$port/" || true)
      [ "${code:-000}" != 000 ] && break
      [ "$i" -lt 200 ] || die "bridge: 127.0.0.1:$port does not answer inside $ns ($(tail -3 "$CLOUD_DIR/$s.log" 2>/dev/null))"
      sleep 0.1
    done
  done
  log "cloud bridged into $ns: 127.0.0.1 ports $ports"
}

# bridge_swift SITE PORT: Swift on SITE's address. Tempauth builds its storage URL from the
# request's Host, so a client that logs in at http://ADDR:PORT/auth/v1.0 keeps talking to ADDR.
bridge_swift() {
  local s=$1 port=${2:-8080} ns addr i code
  ns=$(ns_of "$s")
  addr=$(addr_of "$s")
  need_pkgs socat:socat curl:curl
  curl -s -o /dev/null -m 5 "http://127.0.0.1:$port/healthcheck" ||
    die "no Swift answers on the host's 127.0.0.1:$port (scripts/swift-aio.sh start)"
  mkdir -p "$CLOUD_DIR"
  stop_group "relay swift-$s-$port.host" "$CLOUD_DIR/swift-$s-$port.host.pid" 2>/dev/null || true
  stop_group "relay swift-$s-$port.ns" "$CLOUD_DIR/swift-$s-$port.ns.pid" 2>/dev/null || true
  relay "swift-$s-$port" "$ns" "$port" "$addr" "$CLOUD_DIR/swift-$s.log"
  for ((i = 0; ; i++)); do
    code=$(ip netns exec "$ns" curl -s -o /dev/null -m 3 -w '%{http_code}' "http://$addr:$port/healthcheck" || true)
    [ "${code:-000}" = 200 ] && break
    [ "$i" -lt 200 ] || die "bridge: Swift does not answer at $addr:$port inside $ns ($(tail -3 "$CLOUD_DIR/swift-$s.log" 2>/dev/null))"
    sleep 0.1
  done
  log "Swift (host 127.0.0.1:$port) served at $addr:$port in $ns"
}

unbridge_cloud() {
  local s=${1:-} pre f
  pre=${s:+$s-}
  [ -d "$CLOUD_DIR" ] || return 0
  for f in "$CLOUD_DIR/$pre"*.pid; do
    [ -f "$f" ] || continue
    stop_group "relay $(basename "$f" .pid)" "$f" 2>/dev/null
  done
  rm -f "$CLOUD_DIR/$pre"*.sock
  [ -n "$s" ] || rm -rf "$CLOUD_DIR"
}

etcd_member() {
  local s=$1 dir=$2 cluster=""
  local t
  for t in a b w; do cluster+="${cluster:+,}$(name_of "$t")=http://$(addr_of "$t"):2380"; done
  mkdir -p "$dir"
  exec ip netns exec "$(ns_of "$s")" etcd --name "$(name_of "$s")" --data-dir "$dir" \
    --listen-client-urls "http://$(addr_of "$s"):2379" --advertise-client-urls "http://$(addr_of "$s"):2379" \
    --listen-peer-urls "http://$(addr_of "$s"):2380" --initial-advertise-peer-urls "http://$(addr_of "$s"):2380" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "drl-det-$TAG" \
    --heartbeat-interval 100 --election-timeout 1000 --pre-vote --log-level warn
}

cmd=${1:-}
shift || true
case "$cmd" in
  up) up ;;
  down) unbridge_cloud; down_quiet; log "down" ;;
  etcd) etcd_member "$1" "$2" ;;
  cut) cut "$1" ;;
  heal) heal "${1:-}" ;;
  isolate) isolate "$1" ;;
  loss) loss "$1" "${2:-}" ;;
  kill-site) kill_site "$1" ;;
  revive-site) ip -n "$R" link set "r$1" up ;;
  flap) flap "$@" ;;
  slow)
    ns_of "$1" >/dev/null
    if [ "$2" = off ]; then
      tc -n "$R" qdisc del dev "r$1" root 2>/dev/null || true
    else
      tc -n "$R" qdisc replace dev "r$1" root tbf rate "$2" burst 4kb latency 2s
    fi
    ;;
  exec) s=$1; shift; exec ip netns exec "$(ns_of "$s")" "$@" ;;
  addr) addr_of "$1" ;;
  bridge-cloud) ns_of "$1" >/dev/null; bridge_cloud "$@" ;;
  bridge-swift) ns_of "$1" >/dev/null; bridge_swift "$@" ;;
  unbridge-cloud) unbridge_cloud "${1:-}" ;;
  *) sed -n '2,32p' "$0" >&2; exit 2 ;;
esac
