#!/usr/bin/env bash
# A one-node OpenStack control plane from Debian 12 "bookworm" packages (OpenStack Zed) on
# 127.0.0.1: RabbitMQ + Keystone + Cinder (NFS driver, manage-existing enabled, on a bind-mounted
# directory) + Heat; with --nova also Placement + Nova (fake virt driver) + a bare neutron-server
# (no agents). No Glance. drl's own copy of the recipe in ../shared/openstack-aio (its README
# explains every pitfall); the test suite (scripts/test.sh) starts it for tests/dr_*.rs.
# Files: scripts/openstack/nova.sh (sourced for --nova), scripts/openstack/drl_os_aio/ (the
# five-line Cinder driver class that composes Cinder's NfsDriver with Cinder's own
# RemoteFSManageableVolumesMixin: Zed's NfsDriver lacks manage-existing).
#
#   os-aio.sh install [--nova]   # apt-get the packages (apt does not start them here:
#                                # policy-rc.d denies it in this container)
#   os-aio.sh start [--nova]     # idempotent; prints when each part is ready, then PSS per service
#   os-aio.sh stop               # kills what start started (process group of each pid), unmounts
#   os-aio.sh status             # pids + PSS
#   os-aio.sh env                # prints export OS_* lines for the openstack/cinder/nova CLIs
#   os-aio.sh wipe               # stop, then delete DIR (DBs, volumes, keys)
#
# OS_AIO_DB=mariadb (default) | sqlite   (mariadb: private mariadbd on a unix socket)
# OS_AIO_KS_PROCESSES=2                  (uwsgi worker processes for Keystone; ~85 MiB each)
#
# Layout under DIR (default /var/tmp/drl-openstack, or $OS_AIO_DIR):
#   etc/<svc>/  generated configs     <svc>/ SQLite DBs (WAL) and state
#   export/     the "NFS export": a plain directory, bind-mounted where os-brick expects the
#               NFS share to be mounted, so Cinder's NfsDriver believes it is mounted.
#   run/ pid files   log/ logs
# Credentials: admin / drl-admin-pw, project admin, domain Default (same as drl's swift-aio.sh).
# Keystone listens on 127.0.0.1:5050 (OS_AIO_KS_PORT). If a Keystone already answers there with
# these credentials (e.g. OS_AIO_KS_PORT=5000 with swift-aio.sh --keystone running), it is reused
# and only the services, endpoints and the "service" role are added to it.
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/lib.sh" # stop_group; this script's own log/die below win

DIR="${OS_AIO_DIR:-/var/tmp/drl-openstack}"
CMD="${1:-}"; shift || true
NOVA=0
while [ $# -gt 0 ]; do
    case "$1" in
        --nova) NOVA=1; shift ;;
        --dir) DIR="$2"; shift 2 ;;
        *) echo "os-aio: unknown argument $1" >&2; exit 2 ;;
    esac
done

HOST=127.0.0.1
# Not 5000: drl's scripts/swift-aio.sh --keystone binds 127.0.0.1:5000 and would fail if this
# Keystone held it. OS_AIO_KS_PORT=5000 reuses swift-aio's Keystone (same admin credentials).
KS_PORT=${OS_AIO_KS_PORT:-5050}
KS_URL="http://$HOST:$KS_PORT/v3"
KS_ADMIN_PW=drl-admin-pw
RMQ_PORT=5672
CINDER_PORT=8776
HEAT_PORT=8004
PLACEMENT_PORT=8778
NOVA_PORT=8774
NEUTRON_PORT=9696
ETC="$DIR/etc"; RUN="$DIR/run"; LOG="$DIR/log"
EXPORT="$DIR/export"
NFS_SHARE="$HOST:$EXPORT"
MNT_BASE="$DIR/cinder/mnt"
PY=/usr/bin/python3
TOOLS="$(dirname "$(readlink -f "$0")")/openstack"
TRANSPORT="rabbit://guest:guest@$HOST:$RMQ_PORT/"

PKGS="keystone python3-keystonemiddleware rabbitmq-server cinder-api cinder-scheduler cinder-volume nfs-common heat-api heat-engine python3-heatclient python3-openstackclient python3-cinderclient curl sudo"
NOVA_PKGS="nova-api nova-conductor nova-scheduler python3-nova placement-api python3-osc-placement python3-novaclient neutron-server"

log() { echo "os-aio: $*"; }
die() { echo "os-aio: error: $*" >&2; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)
since() { local ms=$(($(now_ms) - T0)); echo "$((ms / 1000)).$(printf %03d $((ms % 1000))) s"; }

install_packages() {
    local missing="" p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    log "installing$missing"
    # Do not let the packages' postinst create/sync their own DBs or register endpoints.
    for p in cinder-common heat-common nova-common placement-common neutron-common; do
        echo "$p $p/dbconfig-install boolean false"
    done | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q $missing
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

start_bg() { # name logfile cmd...   (own session/process group, pid in run/<name>.pid)
    local name="$1" logf="$2"; shift 2
    if pid_alive "$RUN/$name.pid"; then return; fi
    setsid "$@" >>"$logf" 2>&1 </dev/null &
    pidfile_write "$RUN/$name.pid" $!
    log "started $name (pid $!) at $(since)"
}

wait_for() { # what timeout_s pidname cmd...
    local what="$1" to="$2" pidn="$3"; shift 3
    local end=$(($(date +%s) + to))
    while [ "$(date +%s)" -lt "$end" ]; do
        if "$@"; then log "$what ready at $(since)"; return 0; fi
        if [ -n "$pidn" ] && ! pid_alive "$RUN/$pidn.pid"; then
            die "$pidn exited; see $LOG/$pidn.log: $(tail -n 5 "$LOG/$pidn.log" 2>/dev/null)"
        fi
        sleep 0.2
    done
    die "$what not ready after ${to}s"
}

sqlite_wal() { $PY -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA journal_mode=WAL')" "$1"; }

# ---------------------------------------------------------------- database
# OS_AIO_DB=mariadb (default): a private mariadbd on a unix socket only (no TCP), datadir under
# DIR, durability traded for speed. OS_AIO_DB=sqlite: one SQLite file per DB in WAL mode; works
# for sequential use, but the eventlet services (cinder-*, heat-engine, nova-conductor) then hit
# "database is locked" under concurrent requests (stress.sh: 5 of 32 requests HTTP 500, 2 volumes
# in error), because a green thread waiting on the SQLite lock blocks the whole process, the lock
# holder included.
DB="${OS_AIO_DB:-mariadb}"
DB_PW=os-aio-db-pw
MYSQL_SOCK="$RUN/mysqld.sock"
db_url() { # name sqlite-path
    if [ "$DB" = mariadb ]; then
        echo "mysql+pymysql://os:$DB_PW@localhost/$1?unix_socket=$MYSQL_SOCK&charset=utf8"
    else
        echo "sqlite:///$2"
    fi
}
db_synced() { # name sqlite-path: after the schema is made (WAL for SQLite)
    if [ "$DB" = sqlite ]; then sqlite_wal "$2"; fi
}
start_mariadb() {
    [ "$DB" = mariadb ] || return 0
    pid_alive "$RUN/mariadb.pid" && return 0
    local m="$DIR/mariadb"
    if [ ! -d "$m/data/mysql" ]; then
        mkdir -p "$m/data"
        mariadb-install-db --datadir="$m/data" --user=root --auth-root-authentication-method=socket \
            --skip-test-db >>"$LOG/setup.log" 2>&1
        log "mariadb datadir created at $(since)"
    fi
    start_bg mariadb "$LOG/mariadb.log" mariadbd --no-defaults --datadir="$m/data" --user=root \
        --socket="$MYSQL_SOCK" --skip-networking --pid-file="$RUN/mariadbd.pid" \
        --log-error="$LOG/mariadb.err" --skip-log-bin --innodb-buffer-pool-size=128M \
        --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --max-connections=500 \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci
    wait_for mariadb 60 mariadb mariadb_ok
    mariadb --no-defaults --socket="$MYSQL_SOCK" -u root -e "
        CREATE USER IF NOT EXISTS 'os'@'localhost' IDENTIFIED BY '$DB_PW';
        GRANT ALL PRIVILEGES ON *.* TO 'os'@'localhost';
        CREATE DATABASE IF NOT EXISTS keystone; CREATE DATABASE IF NOT EXISTS cinder;
        CREATE DATABASE IF NOT EXISTS heat; CREATE DATABASE IF NOT EXISTS placement;
        CREATE DATABASE IF NOT EXISTS nova_api; CREATE DATABASE IF NOT EXISTS nova_cell0;
        CREATE DATABASE IF NOT EXISTS nova_cell1; CREATE DATABASE IF NOT EXISTS neutron;"
}
mariadb_ok() { [ -S "$MYSQL_SOCK" ] && mariadb-admin --no-defaults --socket="$MYSQL_SOCK" -u root ping >/dev/null 2>&1; }

# ---------------------------------------------------------------- RabbitMQ
RMQ_ENV=(HOME="$DIR/rabbitmq" RABBITMQ_NODENAME=drl@localhost RABBITMQ_NODE_IP_ADDRESS=$HOST
    RABBITMQ_NODE_PORT=$RMQ_PORT ERL_EPMD_ADDRESS=$HOST RABBITMQ_DIST_PORT=25672
    RABBITMQ_MNESIA_BASE="$DIR/rabbitmq/mnesia" RABBITMQ_LOG_BASE="$LOG"
    RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/rabbitmq/enabled_plugins"
    RABBITMQ_PID_FILE="$RUN/rabbitmq.erlpid"
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
start_rabbit() {
    mkdir -p "$DIR/rabbitmq"
    [ -f "$DIR/rabbitmq/enabled_plugins" ] || echo "[]." >"$DIR/rabbitmq/enabled_plugins"
    start_bg rabbitmq "$LOG/rabbitmq.log" env "${RMQ_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server
}
rabbit_ready() { port_open $RMQ_PORT; }

# ---------------------------------------------------------------- Keystone
ks_token() {
    curl -fs -m 5 -o /dev/null -D - -H "Content-Type: application/json" -d \
        '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"'"$KS_ADMIN_PW"'"}}},"scope":{"project":{"name":"admin","domain":{"name":"Default"}}}}}' \
        "$KS_URL/auth/tokens" | awk -F': ' 'tolower($1)=="x-subject-token"{print $2}' | tr -d '\r'
}
ks_ok() { [ -n "$(ks_token 2>/dev/null)" ]; }

start_keystone() {
    pid_alive "$RUN/keystone.pid" && return 0
    if ks_ok; then log "reusing the Keystone that answers on $KS_URL"; return; fi
    local k="$DIR/keystone" conf="$ETC/keystone/keystone.conf"
    mkdir -p "$k" "$ETC/keystone"
    keystone_conf "$k" "$LOG" "$(db_url keystone "$k/keystone.db")" >"$conf"
    if [ ! -f "$k/.bootstrapped" ]; then
        keystone-manage --config-file "$conf" db_sync >>"$LOG/setup.log" 2>&1
        db_synced keystone "$k/keystone.db"
        keystone_bootstrap "$conf" "$KS_URL" "$KS_ADMIN_PW" "$LOG/setup.log"
        touch "$k/.bootstrapped"
        log "keystone bootstrapped at $(since)"
    fi
    # uwsgi, several processes of one thread each: keystone-wsgi-public alone is a single-threaded
    # wsgiref server that serialises every token validation of every service; uwsgi threads make
    # SQLite connections cross threads (sqlite3.ProgrammingError in the pool). "Connection: close"
    # because --http-socket does no keep-alive and clients that reuse the socket get ECONNRESET.
    OS_KEYSTONE_CONFIG_FILES="$conf" start_bg keystone "$LOG/keystone.log" \
        uwsgi --plugins python3 --http-socket "$HOST:$KS_PORT" --wsgi-file /usr/bin/keystone-wsgi-public \
        --master --processes "${OS_AIO_KS_PROCESSES:-2}" --threads 1 --die-on-term --need-app \
        --buffer-size 65535 --add-header "Connection: close" --env "OS_KEYSTONE_CONFIG_FILES=$conf"
}

ks_register() { # type name url [type name url ...]  (idempotent; public+internal+admin endpoints)
    $PY "$TOOLS/ks_admin.py" register "$KS_URL" "$KS_ADMIN_PW" "$@"
}

ks_service_role() { # role "service" for admin on project admin (see scripts/openstack/ks_admin.py)
    $PY "$TOOLS/ks_admin.py" service-role "$KS_URL" "$KS_ADMIN_PW"
}

authtoken_section() { # [keystone_authtoken]-style block with the admin user as service user
    cat <<EOF
www_authenticate_uri = http://$HOST:$KS_PORT
auth_url = http://$HOST:$KS_PORT
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = admin
username = admin
password = $KS_ADMIN_PW
region_name = RegionOne
EOF
}

# ---------------------------------------------------------------- Cinder
nfs_mountpoint() { # os-brick mounts share S at <nfs_mount_point_base>/<md5(S)>
    echo "$MNT_BASE/$(printf %s "$NFS_SHARE" | md5sum | cut -d' ' -f1)"
}

write_cinder() {
    local c="$DIR/cinder"
    mkdir -p "$ETC/cinder" "$c/lock" "$MNT_BASE" "$EXPORT"
    echo "$NFS_SHARE" >"$ETC/cinder/nfs_shares"
    cp /etc/cinder/api-paste.ini "$ETC/cinder/api-paste.ini"
    cat >"$ETC/cinder/cinder.conf" <<EOF
[DEFAULT]
transport_url = $TRANSPORT
auth_strategy = keystone
state_path = $c
log_dir = $LOG
my_ip = $HOST
host = aio
api_paste_config = $ETC/cinder/api-paste.ini
osapi_volume_listen = $HOST
osapi_volume_listen_port = $CINDER_PORT
osapi_volume_workers = 1
rootwrap_config = /etc/cinder/rootwrap.conf
enabled_backends = nfs
glance_api_servers = http://$HOST:9292
# the default project quota (10 volumes, 1000 GiB) would turn a bulk import into HTTP 413s;
# a test can still lower a project's quota through the API (os-quota-sets)
quota_volumes = 1000
quota_snapshots = 1000
quota_gigabytes = 100000
[database]
connection = $(db_url cinder "$c/cinder.db")
[keystone_authtoken]
$(authtoken_section)
service_token_roles_required = true
[nova]
$(authtoken_section)
[service_user]
send_service_user_token = true
$(authtoken_section)
[oslo_concurrency]
lock_path = $c/lock
[nfs]
volume_driver = drl_os_aio.nfs_manageable.ManageableNfsDriver
volume_backend_name = nfs
nfs_shares_config = $ETC/cinder/nfs_shares
nfs_mount_point_base = $MNT_BASE
nfs_sparsed_volumes = true
nfs_snapshot_support = true
nas_secure_file_operations = false
nas_secure_file_permissions = false
EOF
}

mount_export() { # bind-mount the export where os-brick would mount the NFS share
    local mp; mp=$(nfs_mountpoint)
    mkdir -p "$mp"
    mountpoint -q "$mp" || { mount --bind "$EXPORT" "$mp"; log "bind-mounted $EXPORT on $mp"; }
}

start_cinder() {
    write_cinder
    mount_export
    local conf="$ETC/cinder/cinder.conf"
    if [ ! -f "$DIR/cinder/.dbsynced" ]; then
        cinder-manage --config-file "$conf" db sync >>"$LOG/setup.log" 2>&1
        db_synced cinder "$DIR/cinder/cinder.db"
        touch "$DIR/cinder/.dbsynced"
        log "cinder db synced at $(since)"
    fi
    start_bg cinder-api "$LOG/cinder-api.out" cinder-api --config-file "$conf"
    start_bg cinder-scheduler "$LOG/cinder-scheduler.out" cinder-scheduler --config-file "$conf"
    # PYTHONPATH: the NfsDriver + manage-existing mixin (openstack/drl_os_aio/nfs_manageable.py)
    start_bg cinder-volume "$LOG/cinder-volume.out" env PYTHONPATH="$TOOLS" cinder-volume --config-file "$conf"
}
cinder_ok() { curl -fs -m 3 -o /dev/null "http://$HOST:$CINDER_PORT/"; }
cinder_volume_up() { # the NFS backend reported capabilities to the scheduler
    local tok; tok=$(ks_token) || return 1
    curl -fs -m 5 -H "X-Auth-Token: $tok" -H "OpenStack-API-Version: volume 3.0" \
        "http://$HOST:$CINDER_PORT/v3/$(admin_project_id)/os-services?binary=cinder-volume" | grep -q '"state": "up"'
}
admin_project_id() {
    [ -n "${ADMIN_PID:-}" ] || ADMIN_PID=$(OS_AUTH_URL=$KS_URL OS_USERNAME=admin OS_PASSWORD=$KS_ADMIN_PW \
        OS_PROJECT_NAME=admin OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default OS_IDENTITY_API_VERSION=3 \
        openstack project show admin -f value -c id)
    echo "$ADMIN_PID"
}

# ---------------------------------------------------------------- Heat
write_heat() {
    local h="$DIR/heat"
    mkdir -p "$ETC/heat" "$h/lock"
    cp /etc/heat/api-paste.ini "$ETC/heat/api-paste.ini"
    cat >"$ETC/heat/heat.conf" <<EOF
[DEFAULT]
transport_url = $TRANSPORT
log_dir = $LOG
host = aio
num_engine_workers = 1
heat_metadata_server_url = http://$HOST:8000
heat_waitcondition_server_url = http://$HOST:8000/v1/waitcondition
region_name_for_services = RegionOne
# stack adopt: a stack can take over existing resources (e.g. the imported volumes) as its own
enable_stack_adopt = true
[database]
connection = $(db_url heat "$h/heat.db")
[paste_deploy]
api_paste_config = $ETC/heat/api-paste.ini
[heat_api]
bind_host = $HOST
bind_port = $HEAT_PORT
workers = 1
[keystone_authtoken]
$(authtoken_section)
[trustee]
auth_type = password
auth_url = http://$HOST:$KS_PORT
username = admin
password = $KS_ADMIN_PW
user_domain_name = Default
[clients_keystone]
auth_uri = http://$HOST:$KS_PORT
[ec2authtoken]
auth_uri = http://$HOST:$KS_PORT/v3
[oslo_concurrency]
lock_path = $h/lock
EOF
}

start_heat() {
    write_heat
    local conf="$ETC/heat/heat.conf"
    if [ ! -f "$DIR/heat/.dbsynced" ]; then
        heat-manage --config-file "$conf" db_sync >>"$LOG/setup.log" 2>&1
        db_synced heat "$DIR/heat/heat.db"
        touch "$DIR/heat/.dbsynced"
        log "heat db synced at $(since)"
    fi
    start_bg heat-api "$LOG/heat-api.out" heat-api --config-file "$conf"
    start_bg heat-engine "$LOG/heat-engine.out" heat-engine --config-file "$conf"
}
heat_ok() { curl -fs -m 3 -o /dev/null "http://$HOST:$HEAT_PORT/"; }

# ---------------------------------------------------------------- Nova + Placement (optional)
NOVA_LIB="$TOOLS/nova.sh"

# m1.tiny: the flavor drl's DR test templates boot their servers with (fake driver: no RAM used).
ensure_flavor() {
    eval "$(do_env)"
    openstack flavor show m1.tiny >/dev/null 2>&1 ||
        openstack flavor create --ram 512 --disk 1 --vcpus 1 m1.tiny >/dev/null
    log "flavor m1.tiny present at $(since)"
}

# ---------------------------------------------------------------- commands
do_start() {
    [ "$(id -u)" = 0 ] || die "must run as root"
    mkdir -p "$RUN" "$LOG" "$ETC"
    [ -f "$DIR/.db" ] || echo "$DB" >"$DIR/.db"
    [ "$(cat "$DIR/.db")" = "$DB" ] || die "$DIR was set up with OS_AIO_DB=$(cat "$DIR/.db"); wipe it or use another --dir"
    start_rabbit
    start_mariadb
    start_keystone
    wait_for keystone 60 "" ks_ok
    local svcs=(volumev3 cinderv3 "http://$HOST:$CINDER_PORT/v3/%(project_id)s"
        block-storage cinder "http://$HOST:$CINDER_PORT/v3/%(project_id)s"
        orchestration heat "http://$HOST:$HEAT_PORT/v1/%(project_id)s")
    if [ "$NOVA" = 1 ]; then
        . "$NOVA_LIB"
        svcs+=(compute nova "http://$HOST:$NOVA_PORT/v2.1" placement placement "http://$HOST:$PLACEMENT_PORT"
            network neutron "http://$HOST:$NEUTRON_PORT")
    fi
    ks_register "${svcs[@]}"
    ks_service_role
    # No Glance runs, and no image endpoint is registered: OSC 6.0's "openstack volume create"
    # then fails ("public endpoint for image service ... not found"; use "cinder create" or the
    # API), but a placeholder endpoint would break "openstack server list" instead.
    log "services registered in keystone at $(since)"
    wait_for rabbitmq 60 rabbitmq rabbit_ready
    start_cinder
    start_heat
    [ "$NOVA" = 1 ] && start_nova
    wait_for cinder-api 90 cinder-api cinder_ok
    wait_for heat-api 90 heat-api heat_ok
    wait_for "cinder-volume (nfs backend up)" 120 cinder-volume cinder_volume_up
    if [ "$NOVA" = 1 ]; then wait_nova; ensure_flavor; fi
    log "all up after $(since)"
    do_status | sed 's/^/os-aio: /'
}

SERVICES="nova-compute nova-scheduler nova-conductor nova-api neutron-server placement-api heat-engine heat-api cinder-volume cinder-scheduler cinder-api keystone mariadb rabbitmq"

do_stop() {
    local s pid
    if pid_alive "$RUN/rabbitmq.pid"; then
        env "${RMQ_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl stop >/dev/null 2>&1 || true
    fi
    for s in $SERVICES; do stop_group "$s" "$RUN/$s.pid"; done
    # epmd daemonises itself out of rabbitmq's process group: find it by its listening port.
    pid=$(ss -Hltnp "sport = :4369" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = epmd ]; then kill "$pid"; log "stopped epmd (pid $pid)"; fi
    local mp; mp=$(nfs_mountpoint)
    if mountpoint -q "$mp" 2>/dev/null; then umount "$mp" || umount -l "$mp"; log "unmounted $mp"; fi
    log "stopped"
}

rss_of_group() { # pgid -> total PSS kB of the process group (shared pages split between sharers)
    local p s=0 v
    for p in $(ps -eo pid=,pgid= | awk -v g="$1" '$2==g {print $1}'); do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || true)
        s=$((s + ${v:-0}))
    done
    echo "$s"
}

do_status() {
    local s total=0 r pid
    for s in $SERVICES; do
        [ -f "$RUN/$s.pid" ] || continue
        if pid=$(pidfile_pid "$RUN/$s.pid"); then
            r=$(rss_of_group "$pid"); total=$((total + r))
            printf "%-16s pid %-7s pss %6d MiB\n" "$s" "$pid" $((r / 1024))
        else
            printf "%-16s dead\n" "$s"
        fi
    done
    echo "total pss $((total / 1024)) MiB (proportional set size of each service's process group)"
}

do_env() {
    cat <<EOF
export OS_AUTH_URL=$KS_URL OS_IDENTITY_API_VERSION=3 OS_USERNAME=admin OS_PASSWORD=$KS_ADMIN_PW
export OS_PROJECT_NAME=admin OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default OS_REGION_NAME=RegionOne
export OS_VOLUME_API_VERSION=3.8
EOF
}

case "$CMD" in
    install)
        install_packages $PKGS
        if [ "$DB" = mariadb ]; then install_packages mariadb-server python3-pymysql; fi
        if [ "$NOVA" = 1 ]; then install_packages $NOVA_PKGS; fi ;;
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    env) do_env ;;
    wipe) do_stop; case "$DIR" in /var/tmp/*|/tmp/*) rm -rf "$DIR"; log "removed $DIR" ;; *) die "not removing $DIR (outside /tmp, /var/tmp)" ;; esac ;;
    *) echo "usage: $0 install|start|stop|status|env|wipe [--nova] [--dir DIR]" >&2; exit 2 ;;
esac
