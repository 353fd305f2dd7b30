# Shared helpers for drl's scripts. Source it:  . "$(dirname "$0")/lib.sh"
#
# - log / warn / die: messages on stderr, prefixed with the script's name.
# - need_cmd CMD [APT_PACKAGE]: make sure CMD exists, installing APT_PACKAGE with apt-get if not.
# - on_exit 'COMMAND': run COMMAND at exit (LIFO), also on INT/TERM. One trap for everything.
# - start_bg NAME LOGFILE CMD...: start a background process, remember its pid for cleanup.
# - stop_pid PID [GRACE_S]: SIGTERM, wait, SIGKILL after the grace period. Only that pid.
# - stop_group NAME PIDFILE: stop the process group led by PIDFILE's pid (a server started with
#   setsid, its workers included): SIGTERM, 5 s, SIGKILL; remove PIDFILE.
# - wait_for_socket PATH TIMEOUT_S [PID]: wait until PATH is a socket (fail early if PID died).
# - repo_root: the repository's top directory.
# - parse_size_bytes SIZE: "256MiB", "1G", "4096" as bytes (powers of 1024), on stdout.
# - make_backing_file FILE BYTES [PREALLOC]: a backing file for a benchmark (full: fallocate and
#   zero-fill with O_DIRECT except on tmpfs, so no unwritten extents; falloc: fallocate only).
# - free_port: a TCP port on 127.0.0.1 that is free now, on stdout.

_lib_name=${0##*/}

log() { printf '%s: %s\n' "$_lib_name" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$_lib_name" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$_lib_name" "$*" >&2
    exit 1
}

repo_root() {
    git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel 2>/dev/null ||
        (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

parse_size_bytes() {
    python3 - "$1" <<'EOF_SIZE'
import re, sys
m = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", sys.argv[1].strip(), re.I)
if not m:
    sys.exit(f"bad size: {sys.argv[1]}")
print(int(m.group(1)) * 1024 ** "_KMGT".index(m.group(2).upper() or "_"))
EOF_SIZE
}

make_backing_file() {
    local file=$1 bytes=$2 prealloc=${3:-full} direct=oflag=direct
    rm -f "$file"
    fallocate -l "$bytes" "$file" || die "fallocate $file failed"
    # tmpfs refuses O_DIRECT (and has no unwritten extents to avoid anyway).
    [ "$(stat -f -c %T "$(dirname "$file")")" = tmpfs ] && direct=""
    if [ "$prealloc" = full ]; then
        dd if=/dev/zero of="$file" bs=1M count=$((bytes / 1048576)) conv=notrunc,fsync \
            $direct status=none || die "zero-filling $file failed"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_apt_updated=0
need_cmd() {
    local cmd=$1 pkg=${2:-$1}
    command -v "$cmd" >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || die "$cmd is missing and apt-get is not available; install $pkg"
    log "$cmd is missing: installing $pkg"
    if [ "$_apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >&2 || die "apt-get install $pkg failed"
    command -v "$cmd" >/dev/null 2>&1 || die "$pkg is installed but $cmd is still missing"
}

# Exit handlers, run last-registered first.
_exit_handlers=()
_run_exit_handlers() {
    local status=$? i
    trap - EXIT INT TERM
    for ((i = ${#_exit_handlers[@]} - 1; i >= 0; i--)); do
        eval "${_exit_handlers[$i]}" || true
    done
    exit "$status"
}
on_exit() {
    if [ ${#_exit_handlers[@]} -eq 0 ]; then
        trap _run_exit_handlers EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
    fi
    _exit_handlers+=("$1")
}

stop_pid() {
    local pid=$1 grace=${2:-5} i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    warn "pid $pid did not stop within ${grace}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Pid files of the test services hold "PID STARTTIME", the start time being field 22 of
# /proc/PID/stat (clock ticks after boot; fork time, kept across exec). A pid file left behind
# by a killed run or a copied machine state names a pid that may belong to another process by
# now: a bare kill -0 takes that process for the service (CI: "keystone not ready" while another
# process held Keystone's old pid), and stop_group would kill that process's whole group.
proc_starttime() { # pid -> start time, or nothing if the process is gone
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) } # after "(comm)", which may itself hold spaces and parentheses
    set -- $s
    echo "${20}"
}
pidfile_write() { echo "$2 $(proc_starttime "$2")" >"$1"; } # pidfile pid
pidfile_pid() {                                            # pidfile -> its pid, if that process is still the one recorded
    local pid="" st=""
    [ -f "$1" ] || return 1
    read -r pid st <"$1" || true
    [ -n "$pid" ] && [ -n "$st" ] && [ "$(proc_starttime "$pid")" = "$st" ] && echo "$pid"
}
pid_alive() { pidfile_pid "$1" >/dev/null; } # pidfile

stop_group() {
    local name=$1 pidf=$2 pid i
    [ -f "$pidf" ] || return 0
    if pid=$(pidfile_pid "$pidf"); then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidf"
}

# start_bg NAME LOGFILE CMD... ; sets BG_PID. The process is stopped at exit.
start_bg() {
    local name=$1 logfile=$2
    shift 2
    "$@" >"$logfile" 2>&1 &
    BG_PID=$!
    on_exit "stop_pid $BG_PID"
    log "started $name (pid $BG_PID, log $logfile)"
}

wait_for_socket() {
    local path=$1 timeout_s=${2:-20} pid=${3:-} i
    for ((i = 0; i < timeout_s * 20; i++)); do
        [ -S "$path" ] && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.05
    done
    return 1
}

# need_pkgs CMD:PACKAGE ... — install the Debian package of every missing command.
need_pkgs() {
    local pair
    for pair in "$@"; do
        need_cmd "${pair%%:*}" "${pair#*:}"
    done
}

# drl_bin — build drl in release (unless DRL_BIN is set) and print the binary's path.
drl_bin() {
    if [ -n "${DRL_BIN:-}" ]; then
        echo "$DRL_BIN"
        return
    fi
    local top
    top=$(repo_root)
    need_cmd protoc protobuf-compiler # etcd-client's build compiles its gRPC protos
    (cd "$top" && cargo build --release --quiet --bin drl) >&2 || die "cargo build failed"
    echo "$top/target/release/drl"
}

# Two sites, one resource: the config the demo and the WAN benchmark run.
#
# pair_config DIR ADDR_A ADDR_B SIZE [RESOURCE_KEYS [MORE_TOML]] — print a config with nodes
# site-a and site-b (control sockets DIR/site-a.sock, DIR/site-b.sock), resource r0 of SIZE
# replicated between ADDR_A and ADDR_B (disk, meta and NBD socket under DIR/a and DIR/b), and
# the local vault DIR/vault. RESOURCE_KEYS are extra lines for [[resource]] (on-congestion,
# max-buffer, ...); MORE_TOML is appended ([shaping] tables, ...).
pair_config() {
    local d=$1 addr_a=$2 addr_b=$3 size=$4 keys=${5:-} more=${6:-} s
    for s in a b; do printf '[[node]]\nname = "site-%s"\ncontrol-socket = "%s/site-%s.sock"\n\n' "$s" "$d" "$s"; done
    printf '[[resource]]\nname = "r0"\nsize = "%s"\nsecret = "drl-pair-secret"\n%s\n' "$size" "$keys"
    for s in a b; do
        printf '\n[resource.on.site-%s]\naddress = "%s"\n' "$s" "$([ "$s" = a ] && echo "$addr_a" || echo "$addr_b")"
        printf 'disk = "%s/%s/r0.img"\nmeta = "%s/%s/r0.meta"\nnbd = "%s/%s/r0.nbd"\n' "$d" "$s" "$d" "$s" "$d" "$s"
    done
    printf '\n[stream]\nvault-dir = "%s/vault"\n%s\n' "$d" "$more"
}

# node_config DIR NODE SIZE — a one-node, unreplicated config (resource r0, its files in DIR:
# r0.img, r0.meta, NBD on DIR/r0.nbd, control socket DIR/NODE.sock), on stdout.
node_config() {
    local d=$1 node=$2 size=$3
    printf '[[node]]\nname = "%s"\ncontrol-socket = "%s/%s.sock"\n' "$node" "$d" "$node"
    # DRL_WORKERS=N: the runtime's worker threads (`worker-threads`; unset: the daemon's default).
    [ -z "${DRL_WORKERS:-}" ] || printf 'worker-threads = %s\n' "$DRL_WORKERS"
    printf '\n'
    printf '[[resource]]\nname = "r0"\nsize = "%s"\nsecret = "unused"\n\n' "$size"
    printf '[resource.on.%s]\naddress = "127.0.0.1:7789"\n' "$node"
    printf 'disk = "%s/r0.img"\nmeta = "%s/r0.meta"\nnbd = "%s/r0.nbd"\n' "$d" "$d" "$d"
}

# start_site DRL CONFIG SITE [NETNS] — start the daemon of site-SITE (a or b) of a pair_config
# config, inside NETNS if given; wait for its NBD export and control socket. Sets SITE_PID.
# Its log is DIR/SITE.log. The caller stops it (stop_pid).
start_site() {
    local drl=$1 cfg=$2 s=$3 ns=${4:-} d pre=()
    d=$(dirname "$cfg")
    [ -n "$ns" ] && pre=(ip netns exec "$ns")
    mkdir -p "$d/$s"
    rm -f "$d/$s/r0.nbd" "$d/site-$s.sock"
    "${pre[@]}" "$drl" daemon --config "$cfg" --node "site-$s" 2>>"$d/$s.log" &
    SITE_PID=$!
    wait_for_socket "$d/$s/r0.nbd" 20 "$SITE_PID" && wait_for_socket "$d/site-$s.sock" 20 "$SITE_PID" ||
        die "site $s did not start: $(tail -5 "$d/$s.log")"
}

# site_field DRL CONFIG SITE FIELD — one field of r0's `status --json` on site-SITE.
site_field() {
    "$1" --config "$2" --node "site-$3" status r0 --json |
        python3 -c "import json,sys; r=json.load(sys.stdin)['resources'][0]; print(r.get('$4'))"
}

# Keystone's configuration as both test clouds run it (swift-aio.sh, openstack-aio.sh): fernet
# tokens, SQL catalog, keys beside the database.   keystone_conf STATE_DIR LOG_DIR DB_URL
keystone_conf() {
    cat <<KSEOF
[DEFAULT]
log_dir = $2
log_file = keystone.log
[database]
connection = $3
[token]
provider = fernet
[fernet_tokens]
key_repository = $1/fernet-keys
[fernet_receipts]
key_repository = $1/fernet-keys
[credential]
key_repository = $1/credential-keys
[catalog]
driver = sql
KSEOF
}

# After db_sync: the key repositories and the admin user, project and the identity endpoint.
#   keystone_bootstrap CONF URL ADMIN_PASSWORD LOGFILE
keystone_bootstrap() {
    local conf=$1 url=$2 pw=$3 logf=$4
    keystone-manage --config-file "$conf" fernet_setup --keystone-user root --keystone-group root >>"$logf" 2>&1
    keystone-manage --config-file "$conf" credential_setup --keystone-user root --keystone-group root >>"$logf" 2>&1
    keystone-manage --config-file "$conf" bootstrap --bootstrap-password "$pw" \
        --bootstrap-admin-url "$url" --bootstrap-internal-url "$url" \
        --bootstrap-public-url "$url" --bootstrap-region-id RegionOne >>"$logf" 2>&1
}
