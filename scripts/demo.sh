#!/usr/bin/env bash
# drl's main job, on one machine: start a node, use its volume with real NBD clients, take a
# snapshot, show the status, stop it cleanly.
#
#   scripts/demo.sh          # run the demo (installs qemu-utils and libnbd-bin if missing)
#   KEEP=1 scripts/demo.sh   # leave the daemon running at the end
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need_pkgs qemu-io:qemu-utils nbdinfo:libnbd-bin nbdcopy:libnbd-bin

drl=$(drl_bin)
work=$(mktemp -d /tmp/drl-demo.XXXXXX)
cfg=$work/drl.toml
cat >"$cfg" <<TOML
[[node]]
name = "site-a"
control-socket = "$work/site-a.sock"

[[resource]]
name = "r0"
size = "256MiB"

[resource.on.site-a]
disk = "$work/a/r0.img"
meta = "$work/a/r0.meta"
nbd = "$work/a/r0.nbd"
TOML
uri="nbd+unix:///?socket=$work/a/r0.nbd"
dctl() { "$drl" --config "$cfg" --node site-a "$@"; }

log "config: $cfg"
"$drl" check-config --config "$cfg" --node site-a
"$drl" daemon --config "$cfg" --node site-a 2>"$work/daemon.log" &
pid=$!
trap '[ -z "${KEEP:-}" ] && kill $pid 2>/dev/null; true' EXIT
wait_for_socket "$work/a/r0.nbd" 20 $pid || die "daemon did not start; log:\n$(cat "$work/daemon.log")"

log "what the export offers (nbdinfo):"
nbdinfo "$uri" | sed 's/^/    /'
log "writing 16 MiB of patterns with qemu-io and reading them back verified"
qemu-io -f raw -c 'write -P 0xa5 0 8M' -c 'write -P 0x3c 8M 8M' -c flush "$uri" | grep -E 'wrote' | sed 's/^/    /'
qemu-io -f raw -c 'read -P 0xa5 0 8M' -c 'read -P 0x3c 8M 8M' "$uri" | grep -E 'read' | sed 's/^/    /'
log "snapshot s1, then overwrite: the snapshot keeps the old data"
dctl snapshot create r0 s1
qemu-io -f raw -c 'write -P 0xff 0 1M' "$uri" >/dev/null
dctl snapshot list r0
log "copying a random 64 MiB file in and out with nbdcopy"
head -c 64M /dev/urandom >"$work/in.bin"
nbdcopy "$work/in.bin" "$uri"
nbdcopy "$uri" "$work/out.bin"
cmp -n $((64 << 20)) "$work/in.bin" "$work/out.bin" && log "    bytes equal"
log "status:"
dctl status
if [ -n "${KEEP:-}" ]; then
  log "daemon left running (pid $pid); config $cfg"
  exit 0
fi
kill -TERM $pid
wait $pid && log "daemon stopped cleanly (exit 0)"
rm -rf "$work"
