# Shared helpers for drl's scripts. Source it: . "$(dirname "$0")/lib.sh"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# need_pkgs CMD:PACKAGE ... — install the Debian package of every missing command.
need_pkgs() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]} and not root: install them with apt-get"
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# wait_for_socket PATH [SECONDS] — wait until a unix socket exists.
wait_for_socket() {
  local path=$1 secs=${2:-20} i
  for ((i = 0; i < secs * 10; i++)); do
    [ -S "$path" ] && return 0
    sleep 0.1
  done
  die "socket $path did not appear within ${secs}s"
}

# drl_bin — build drl in release (unless DRL_BIN is set) and print the binary's path.
drl_bin() {
  if [ -n "${DRL_BIN:-}" ]; then echo "$DRL_BIN"; return; fi
  local top; top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  (cd "$top" && cargo build --release --quiet --bin drl) >&2 || die "cargo build failed"
  echo "$top/target/release/drl"
}
