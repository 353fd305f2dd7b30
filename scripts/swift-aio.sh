#!/usr/bin/env bash
# A one-node OpenStack Swift all-in-one on 127.0.0.1 for drl's tests (tempauth, SLO, bulk).
#
#   scripts/swift-aio.sh start  [--dir DIR]   # idempotent; waits until GET /auth/v1.0 answers
#   scripts/swift-aio.sh stop   [--dir DIR]   # kills what start started, unmounts the XFS image
#   scripts/swift-aio.sh status [--dir DIR]   # exit 0 when everything runs and auth answers
#   scripts/swift-aio.sh test [--keystone] [-- cargo test args]
#                                              # start, run drl's Swift tests, stop what it started
#   scripts/swift-aio.sh start --keystone      # also Keystone v3 (SQLite, WAL) on :5000 and a
#                                              # second proxy on :8081 that trusts Keystone
#
# Layout under DIR (default /var/tmp/drl-swift, or $DRL_SWIFT_DIR):
#   etc/      proxy/account/container/object configs and the rings (swift_dir)
#   xfs.img   sparse XFS image, loop-mounted on node/d1 (ext4's xattr size limit breaks Swift)
#   run/      pid files,  log/  server logs
# Swift 2.30 always reads /etc/swift/swift.conf, so that one file is written there (the
# package's original is kept once as /etc/swift/swift.conf.drl-orig).
# Credentials: account "test", user "tester", key "testing" (tempauth: test:tester / testing).
# Keystone (with --keystone): user admin / password drl-admin-pw, project admin, domain
# Default, region RegionOne; object-store endpoint http://127.0.0.1:8081/v1/AUTH_<project id>.
# Test-bed credentials only: everything listens on 127.0.0.1.
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/lib.sh" # stop_group; this script's own log/die below win

DIR="${DRL_SWIFT_DIR:-/var/tmp/drl-swift}"
KEYSTONE=0
CMD="${1:-}"
shift || true
TEST_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; TEST_ARGS=("$@"); break ;;
        --dir) DIR="$2"; shift 2 ;;
        --dir=*) DIR="${1#--dir=}"; shift ;;
        --keystone) KEYSTONE=1; shift ;;
        *) echo "swift-aio: unknown argument $1" >&2; exit 2 ;;
    esac
done

HOST=127.0.0.1
PROXY_PORT=8080
OBJ_PORT=6200
CONT_PORT=6201
ACC_PORT=6202
MEMCACHED_PORT=11311
IMG_SIZE=${SWIFT_IMG_SIZE:-16G}
ETC="$DIR/etc"
RUN="$DIR/run"
LOG="$DIR/log"
NODE="$DIR/node"
MNT="$NODE/d1"
IMG="$DIR/xfs.img"
AUTH_URL="http://$HOST:$PROXY_PORT/auth/v1.0"
SERVERS="account container object proxy"
PACKAGES="swift swift-proxy swift-account swift-container swift-object memcached python3-swiftclient xfsprogs curl"
KS_PACKAGES="keystone python3-keystonemiddleware"
KS_PORT=5000
KS_PROXY_PORT=8081
KS_ADMIN_PW=drl-admin-pw
KS_URL="http://$HOST:$KS_PORT/v3"
PY=/usr/bin/python3

log() { echo "swift-aio: $*"; }
die() { echo "swift-aio: error: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (mounts a loop device)"; }

install_packages() { # packages...
    local missing=""
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        log "installing$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # shellcheck disable=SC2086
        apt-get install -y -q $missing
    fi
}

auth_ok() {
    curl -fs -o /dev/null -m 2 -H "X-Auth-User: test:tester" -H "X-Auth-Key: testing" "$AUTH_URL"
}

mount_xfs() {
    mkdir -p "$MNT"
    if mountpoint -q "$MNT"; then return; fi
    # A test bed starts empty: the objects of earlier runs would only fill the image
    # (SWIFT_KEEP_DATA=1 keeps them).
    if [ ! -f "$IMG" ] || [ "${SWIFT_KEEP_DATA:-0}" != 1 ]; then
        rm -f "$IMG"
        truncate -s "$IMG_SIZE" "$IMG"
        mkfs.xfs -q -f "$IMG"
    fi
    mount -o loop,noatime "$IMG" "$MNT"
    log "mounted $IMG on $MNT"
}

write_configs() {
    mkdir -p "$ETC" "$RUN" "$LOG"
    if [ -f /etc/swift/swift.conf ] && ! grep -q "drl-swift-aio" /etc/swift/swift.conf \
        && [ ! -f /etc/swift/swift.conf.drl-orig ]; then
        cp /etc/swift/swift.conf /etc/swift/swift.conf.drl-orig
    fi
    mkdir -p /etc/swift
    cat >/etc/swift/swift.conf <<EOF
# written by drl scripts/swift-aio.sh (drl-swift-aio)
[swift-hash]
swift_hash_path_suffix = drl-swift-aio-suffix
swift_hash_path_prefix = drl-swift-aio-prefix

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
EOF
    cp /etc/swift/swift.conf "$ETC/swift.conf"

    local common="[DEFAULT]
bind_ip = $HOST
swift_dir = $ETC
devices = $NODE
mount_check = false
user = root
workers = 1
log_name = %s
log_level = INFO
log_address = /dev/null
"
    # shellcheck disable=SC2059
    {
        printf "$common" account-server
        echo "bind_port = $ACC_PORT"
        printf "\n[pipeline:main]\npipeline = account-server\n\n[app:account-server]\nuse = egg:swift#account\n"
    } >"$ETC/account-server.conf"
    # shellcheck disable=SC2059
    {
        printf "$common" container-server
        echo "bind_port = $CONT_PORT"
        printf "\n[pipeline:main]\npipeline = container-server\n\n[app:container-server]\nuse = egg:swift#container\n"
    } >"$ETC/container-server.conf"
    # shellcheck disable=SC2059
    {
        printf "$common" object-server
        echo "bind_port = $OBJ_PORT"
        printf "\n[pipeline:main]\npipeline = object-server\n\n[app:object-server]\nuse = egg:swift#object\n"
    } >"$ETC/object-server.conf"
    cat >"$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = $HOST
bind_port = $PROXY_PORT
swift_dir = $ETC
user = root
workers = 1
log_name = proxy-server
log_address = /dev/null

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk slo dlo tempauth copy proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
allow_account_management = true
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = $HOST:$MEMCACHED_PORT

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:bulk]
use = egg:swift#bulk

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo

[filter:copy]
use = egg:swift#copy
EOF
}

build_rings() {
    local b port
    for b in account container object; do
        [ -f "$ETC/$b.ring.gz" ] && continue
        case $b in account) port=$ACC_PORT ;; container) port=$CONT_PORT ;; object) port=$OBJ_PORT ;; esac
        (
            cd "$ETC"
            rm -f "$b.builder"
            swift-ring-builder "$b.builder" create 8 1 1 >/dev/null
            swift-ring-builder "$b.builder" add "r1z1-$HOST:$port/d1" 100 >/dev/null
            swift-ring-builder "$b.builder" rebalance >/dev/null
        )
        log "built $b ring"
    done
}

start_bg() { # name pidfile logfile cmd...
    local name="$1" pidf="$2" logf="$3"
    shift 3
    if pid_alive "$pidf"; then return; fi
    setsid "$@" >>"$logf" 2>&1 </dev/null &
    pidfile_write "$pidf" $!
    log "started $name (pid $!)"
}

do_start() {
    need_root
    local t0
    t0=$(date +%s%N)
    if all_running && auth_ok; then
        log "already running on $AUTH_URL"
        return 0
    fi
    # shellcheck disable=SC2086
    install_packages $PACKAGES
    mount_xfs
    write_configs
    build_rings
    start_bg memcached "$RUN/memcached.pid" "$LOG/memcached.log" \
        memcached -u root -l "$HOST" -p "$MEMCACHED_PORT" -U 0 -m 64
    local s
    for s in $SERVERS; do
        start_bg "$s-server" "$RUN/$s.pid" "$LOG/$s.log" "swift-$s-server" "$ETC/$s-server.conf"
    done
    local i
    for i in $(seq 1 300); do
        if auth_ok; then
            local ms=$((($(date +%s%N) - t0) / 1000000))
            log "Swift answers on $AUTH_URL after $((ms / 1000)).$(printf %03d $((ms % 1000))) s"
            return 0
        fi
        for s in $SERVERS; do
            pid_alive "$RUN/$s.pid" || die "$s-server exited; see $LOG/$s.log: $(tail -n 5 "$LOG/$s.log")"
        done
        sleep 0.2
    done
    die "Swift did not answer on $AUTH_URL within 60 s; logs in $LOG"
}

all_running() {
    local s
    pid_alive "$RUN/memcached.pid" || return 1
    for s in $SERVERS; do pid_alive "$RUN/$s.pid" || return 1; done
    mountpoint -q "$MNT"
}

do_stop() {
    need_root
    local s
    stop_group proxy-keystone "$RUN/proxy-keystone.pid"
    stop_group keystone "$RUN/keystone.pid"
    for s in proxy object container account; do stop_group "$s-server" "$RUN/$s.pid"; done
    stop_group memcached "$RUN/memcached.pid"
    if mountpoint -q "$MNT" 2>/dev/null; then
        umount "$MNT" || umount -l "$MNT"
        log "unmounted $MNT"
    fi
    # Detach any loop device still bound to our image.
    local dev
    for dev in $(losetup -j "$IMG" -O NAME -n 2>/dev/null); do losetup -d "$dev" || true; done
    log "stopped"
}

do_status() {
    local s rc=0 pid
    if mountpoint -q "$MNT" 2>/dev/null; then echo "xfs: mounted on $MNT"; else echo "xfs: not mounted"; rc=1; fi
    for s in memcached $SERVERS; do
        if pid=$(pidfile_pid "$RUN/$s.pid"); then echo "$s: running (pid $pid)"
        else echo "$s: stopped"; rc=1; fi
    done
    if auth_ok; then echo "auth: $AUTH_URL answers"; else echo "auth: $AUTH_URL does not answer"; rc=1; fi
    if [ -f "$RUN/keystone.pid" ]; then
        if pid_alive "$RUN/keystone.pid" && ks_token_ok; then echo "keystone: $KS_URL answers"
        else echo "keystone: not answering"; rc=1; fi
        if pid_alive "$RUN/proxy-keystone.pid"; then echo "proxy-keystone: running on :$KS_PROXY_PORT"
        else echo "proxy-keystone: stopped"; rc=1; fi
    fi
    return $rc
}


ks_token_ok() {
    curl -fs -o /dev/null -m 3 -H "Content-Type: application/json" -d \
        '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"'"$KS_ADMIN_PW"'"}}},"scope":{"project":{"name":"admin","domain":{"name":"Default"}}}}}' \
        "$KS_URL/auth/tokens"
}

write_keystone_config() {
    local k="$DIR/keystone"
    mkdir -p "$k"
    keystone_conf "$k" "$LOG" "sqlite:///$k/keystone.db" >"$k/keystone.conf"
}

keystone_setup() { # once: schema, WAL, keys, admin
    local k="$DIR/keystone" conf="$DIR/keystone/keystone.conf"
    [ -f "$k/.bootstrapped" ] && return
    keystone-manage --config-file "$conf" db_sync >>"$LOG/keystone-manage.log" 2>&1
    # SQLite in WAL mode: readers (token validation) no longer block the writer.
    $PY -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print('swift-aio: keystone journal', c.execute('PRAGMA journal_mode=WAL').fetchone()[0])" "$k/keystone.db"
    keystone_bootstrap "$conf" "$KS_URL" "$KS_ADMIN_PW" "$LOG/keystone-manage.log"
    touch "$k/.bootstrapped"
}

keystone_register_swift() { # idempotent: object-store service + its endpoints
    $PY "$(dirname "$(readlink -f "$0")")/openstack/ks_admin.py" register "$KS_URL" "$KS_ADMIN_PW" \
        object-store swift "http://$HOST:$KS_PROXY_PORT/v1/AUTH_%(project_id)s"
    log "object-store endpoint registered in Keystone"
}

write_keystone_proxy_config() {
    sed -e "s/^bind_port = $PROXY_PORT/bind_port = $KS_PROXY_PORT/" \
        -e "s/^log_name = proxy-server/log_name = proxy-keystone/" \
        -e "s/ tempauth / authtoken keystoneauth /" \
        "$ETC/proxy-server.conf" >"$ETC/proxy-keystone.conf"
    cat >>"$ETC/proxy-keystone.conf" <<EOF

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = http://$HOST:$KS_PORT
auth_url = http://$HOST:$KS_PORT
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = admin
username = admin
password = $KS_ADMIN_PW
delay_auth_decision = True
memcached_servers = $HOST:$MEMCACHED_PORT

[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
EOF
}

start_keystone() {
    # shellcheck disable=SC2086
    install_packages $KS_PACKAGES
    local t0 i
    t0=$(date +%s%N)
    write_keystone_config
    keystone_setup
    OS_KEYSTONE_CONFIG_FILES="$DIR/keystone/keystone.conf" \
        start_bg keystone "$RUN/keystone.pid" "$LOG/keystone-server.log" \
        $PY /usr/bin/keystone-wsgi-public --host "$HOST" --port "$KS_PORT"
    for i in $(seq 1 300); do
        ks_token_ok && break
        pid_alive "$RUN/keystone.pid" || die "keystone exited; see $LOG/keystone-server.log"
        sleep 0.2
    done
    ks_token_ok || die "Keystone did not answer on $KS_URL within 60 s"
    keystone_register_swift
    write_keystone_proxy_config
    start_bg proxy-keystone "$RUN/proxy-keystone.pid" "$LOG/proxy-keystone.log" \
        swift-proxy-server "$ETC/proxy-keystone.conf"
    for i in $(seq 1 300); do
        if curl -fs -o /dev/null -m 2 "http://$HOST:$KS_PROXY_PORT/healthcheck"; then
            local ms=$((($(date +%s%N) - t0) / 1000000))
            log "Keystone answers on $KS_URL, Swift behind Keystone on :$KS_PROXY_PORT after $((ms / 1000)).$(printf %03d $((ms % 1000))) s"
            return 0
        fi
        pid_alive "$RUN/proxy-keystone.pid" || die "proxy-keystone exited; see $LOG/proxy-keystone.log"
        sleep 0.2
    done
    die "the Keystone proxy did not answer on :$KS_PROXY_PORT"
}

case "$CMD" in
    start)
        do_start
        if [ "$KEYSTONE" = 1 ]; then start_keystone; fi
        ;;
    stop) do_stop ;;
    status) do_status ;;
    test)
        # Stop afterwards only what this run started: a Swift that was already up stays up.
        was_up=0
        if all_running && auth_ok; then was_up=1; fi
        do_start
        if [ "$KEYSTONE" = 1 ]; then start_keystone; fi
        if [ "$was_up" = 0 ]; then trap do_stop EXIT; fi
        cd "$(dirname "$0")/.."
        cargo test -p drl --test swift_stream --test swift_faults "${TEST_ARGS[@]}"
        ;;
    *) echo "usage: $0 start|stop|status|test [--dir DIR] [--keystone] [-- cargo test args]" >&2; exit 2 ;;
esac
