#!/usr/bin/env bash
# The disaster drill: one command runs a whole disaster on this machine and reports RPO, RTO
# and a timeline.
#
#   scripts/drill.sh [--rate 100mbit] [--volume-size 1GiB] [--volumes 2] [--seed N]
#                    [--writer-rate 1500] [--lease-ttl 3] [--probe-interval 50ms] [--snapshot-every 1s|off]
#                    [--fill 0] [--separate] [--backup-nodes 1|2] [--etcd-leader witness|any]
#                    [--tag drill] [--out DIR]
#                    [--keep] [--short] [--no-cloud]
#
# What it does, each step timed (timeline.csv / timeline.md / timeline.png in --out):
#  1. three sites as network namespaces (site A, site B, a witness) behind a router namespace
#     (scripts/detect-testbed.sh), the A-B path shaped with tc tbf at --rate, one etcd member
#     per site, one drl daemon at A and one at B with site-failure detection ([detect]: UDP
#     pingers on every node, a lease per resource in etcd, self-fencing), the workload's
#     --volumes as ONE consistency group (a resource PLAN-db of --volumes volumes, replicated
#     A -> B in one write order, promoted at one point in time; volume 0 the server's boot
#     volume, the others attached), initial sync. --separate protects each volume as its own
#     resource instead (the layout before groups, which cannot promise one cut across the
#     volumes), and then two daemons at B by default (--backup-nodes: the storage nodes
#     site-b and site-b2, both in site B's namespace, [[node]] site = "site-b"; the volumes
#     alternate between them, so the plan's recovery spans two backup nodes); the backup
#     site's cloud (scripts/openstack-aio.sh: Keystone, Cinder, Heat, Nova with the fake
#     driver, on the host's 127.0.0.1) bridged into site B's
#     namespace (detect-testbed.sh bridge-cloud); a protection plan over the volumes with
#     failover = "automatic": a HOT template with a Nova server booted from the first volume
#     and the others attached (primary-site IDs inside), checked and checkpointed (drl dr
#     protect); the plan's protection actions at A (the snapshot policy, the paper's other
#     one): a snapshot of every volume each --snapshot-every streamed incrementally to Swift
#     ([[plan]] snapshot-to) and a base image copied to Swift ([[plan]] images), Swift being
#     at site B (the host's scripts/swift-aio.sh served at B's address by detect-testbed.sh
#     bridge-swift, so A's uploads cross the shaped link);
#  2. a workload at A (drl-drill write): dependent 4 KiB writes alternating over the volumes,
#     every write logged before it is sent and when it is acknowledged; A's status (lag,
#     send queue) sampled every 100 ms;
#  3. site A killed at a random moment (seeded): every process of the site SIGKILLed (its
#     daemon, the writer, its etcd member), its link down;
#  4. nothing touched: B's pingers suspect A, B takes each resource's lease once A's expired
#     in etcd (the witness makes the majority) and promotes itself; B's daemon recovers the
#     plan by itself: Keystone login, promote, import each volume into Cinder
#     (manage-existing), the template's IDs remapped, the stack created; the times come from
#     B's own events and the recovery journal;
#  5. B's volumes read through NBD from the moment of the kill (the first answered read is the
#     data's RTO) and held against the writer's log (drl-drill check): each volume a prefix
#     of the writes, nothing damaged; RPO = the acknowledged writes missing (count, bytes,
#     time span) against the lag A reported at the kill; the stack CREATE_COMPLETE with its
#     server booted from the imported first volume and the others attached (Heat, Cinder),
#     and the imported volumes, read as Cinder serves them, the same prefix;
#  5b. the same kill under the snapshot policy: the newest snapshot of each volume that A had
#     streamed to Swift before the kill, restored at B from Swift (drl restore, all volumes at
#     once) and held against the same log: its RPO (the writes after the snapshot) and RTO
#     (the decision as above, then the restore; to the workload: plus this run's import and
#     stack steps, which are the same for both policies) beside replication's; the base image
#     pulled back from Swift and compared;
#  6. fail back: a workload at B, A returns as Secondary and resyncs only what changed (bytes
#     against the volume size), then `drl dr failback --stop-workload`: the stack deleted, the
#     volumes unmanaged (the data stays), digests compared where Cinder could have written
#     around drl, a planned switchover back to A with RPO 0 (every write acknowledged at B is
#     at A, the disks identical);
#  7. the summary table, the timeline (markdown + CSV) and a plot.
#
# --probe-interval (default 50ms, drl's default is 100ms) is [detect] probe-interval: with two
# misses to suspect, a kill is suspected within about two intervals plus the probe timeout
# (100 ms), so 50 ms keeps suspicion under the 300 ms goal (bench-detect.sh: p50 139 ms, max 175
# ms at 50 ms; 257 / 320 ms at 100 ms). Suspicion alone promotes nothing (that takes the lease
# expiring), so the faster probe costs no false promotions.
#
# --fill F puts F x the volume size of random data into each of A's volumes before protection
# begins (after the workload's quarter, at most 0.75): the initial sync and the first snapshot
# carry it, and the snapshot policy's restore has to bring it back (its RTO grows with it);
# replication's does not move it.
#
# --no-cloud leaves out the plan, Cinder and Heat (no OpenStack on the machine): the RTO then
# ends at the first read at B. Volume sizes are whole GiB with the cloud (Cinder sizes an
# imported volume in GiB and its NFS driver attaches only a file of exactly that size); the
# volumes are sparse and the initial sync sends zeroes as ranges, so 1 GiB costs little.
#
# Needs root (network namespaces) and, for the cloud, about 2.2 GiB of memory. Installs what it
# needs on Debian 12: iproute2, etcd-server/-client, nftables, socat, curl, python3 (+
# matplotlib for the plot), the OpenStack packages (scripts/openstack-aio.sh install --nova),
# and builds drl and drl-drill. A cloud already running (Keystone on 127.0.0.1:5050) is used
# and left running; one the drill had to start is stopped at the end (not with --keep).
# Everything it creates is named drl-det-drill-* (namespaces), drl-drill-* (plan, stack,
# resources, Cinder volumes, files, Swift containers drl-drill-*-snap/-images). --tag TAG
# names the testbed drl-det-TAG-* instead (two drills at once). Exits non-zero if a check fails.
# Swift (127.0.0.1:8080, tempauth) is used when it answers and started when not
# (scripts/swift-aio.sh start; stopped at the end like the cloud).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

rate=100mbit size="" nvol=2 seed=$RANDOM writer_rate=1500 ttl=3 out="" keep=0 short=0 cloud=1
snap_every=1s tag=${DRL_DRILL_TAG:-drill} fill=0 bnodes="" probe=50ms group=1 etcd_leader=witness
while [ $# -gt 0 ]; do
    case "$1" in
    --rate) rate=$2; shift 2 ;;
    --volume-size) size=$2; shift 2 ;;
    --volumes) nvol=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --writer-rate) writer_rate=$2; shift 2 ;;
    --lease-ttl) ttl=$2; shift 2 ;;
    --probe-interval) probe=$2; shift 2 ;;
    --etcd-leader) etcd_leader=$2; shift 2 ;;
    --snapshot-every) snap_every=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --fill) fill=$2; shift 2 ;;
    --backup-nodes) bnodes=$2; shift 2 ;;
    --separate) group=0; shift ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --short) short=1; shift ;;
    --no-cloud) cloud=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "the drill needs root: its sites are network namespaces"
[[ $nvol =~ ^[1-9][0-9]*$ ]] && [ "$nvol" -le 8 ] || die "--volumes must be 1..8"
[[ $fill =~ ^[0-9]*\.?[0-9]+$ ]] && python3 -c "import sys; sys.exit(not 0 <= $fill <= 0.75)" ||
    die "--fill must be a fraction 0..0.75 of the volume, not $fill"
[[ $etcd_leader =~ ^(witness|any)$ ]] || die "--etcd-leader must be witness or any, not $etcd_leader"
[[ $probe =~ ^[1-9][0-9]*ms$ ]] || die "--probe-interval must be milliseconds (e.g. 50ms), not $probe"
[ "$nvol" -ge 2 ] || group=0 # one volume is no group
if [ $group = 1 ]; then
    # A group is one resource: one node pair holds all of its volumes.
    [ "${bnodes:-1}" = 1 ] || die "--backup-nodes 2 needs --separate: a consistency group lives on one backup node"
    bnodes=1
fi
[ -n "$bnodes" ] || bnodes=2
[[ $bnodes =~ ^[12]$ ]] || die "--backup-nodes must be 1 or 2 (drl daemons at site B)"
[ "$nvol" -ge 2 ] || bnodes=1 # one volume: one backup node holds it
[[ $tag =~ ^[a-z0-9]{1,8}$ ]] || die "--tag must be 1-8 lower-case letters or digits (namespaces drl-det-TAG-*)"
# The snapshot policy needs the plan (its schedule), so the cloud.
snap=1
if [ "$snap_every" = off ] || [ $cloud = 0 ]; then snap=0
elif ! [[ $snap_every =~ ^[1-9][0-9]*(ms|s|m)$ ]]; then die "--snapshot-every must be a duration (e.g. 1s, 1500ms) or off"
fi
need_pkgs ip:iproute2 tc:iproute2 python3:python3 etcd:etcd-server etcdctl:etcd-client
[ -n "$size" ] || size=$([ $cloud = 1 ] && echo 1GiB || echo 256MiB)
if [ $cloud = 1 ]; then
    [[ $size =~ ^[1-9][0-9]*(GiB|G)$ ]] || die "--volume-size must be whole GiB with the cloud (e.g. 1GiB): Cinder sizes imported volumes in GiB; --no-cloud for others"
    need_pkgs socat:socat curl:curl
fi
if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    log "installing python3-matplotlib (the timeline's plot)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-matplotlib >&2 || warn "no python3-matplotlib: no plot"
fi

drl=$(drl_bin)
drill=$(dirname "$drl")/drl-drill
if [ -z "${DRL_BIN:-}" ]; then
    (cd "$(repo_root)" && cargo build --release --quiet --bin drl-drill) >&2 || die "cargo build of drl-drill failed"
fi
[ -x "$drill" ] || die "no drl-drill next to $drl (set DRL_BIN to a build that has both)"

work=$(mktemp -d /tmp/drl-drill.XXXXXX)
[ -n "$out" ] || out=$(repo_root)/bench-results/drill-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
# The three-site testbed: namespaces drl-det-TAG-{a,b,w} behind the router drl-det-TAG-r.
export DRL_DET_TAG=$tag
bed() { "$here/detect-testbed.sh" "$@"; }
NS_A=drl-det-$tag-a NS_B=drl-det-$tag-b NS_R=drl-det-$tag-r
ADDR_A=$(bed addr a) ADDR_B=$(bed addr b) ADDR_W=$(bed addr w)
# The plan's name (the stack's and every Cinder volume's drl-plan) and the resources' prefix:
# unique per run in the shared cloud, apart from the seed (which drives the experiment).
plan=drl-drill-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
EXPORT=/var/tmp/drl-openstack/export KS_URL=http://127.0.0.1:5050/v3
RANDOM=$seed

t0=$(date +%s%N)
events=$work/timeline.csv
echo "t_ms,site,event,detail" >"$events"
ev() { # SITE EVENT DETAIL — one timeline row, relative to the drill's start
    local t=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "$t,$1,$2,\"$3\"" >>"$events"
    log "[$((t / 1000)).$(printf %03d $((t % 1000)))s] $1: $2 ${3:+($3)}"
}
ev_at() { # UNIX_MS SITE EVENT DETAIL — a row at the time an event really happened (a daemon's record)
    local t=$(( $1 - t0 / 1000000 ))
    echo "$t,$2,$3,\"$4\"" >>"$events"
    log "[$((t / 1000)).$(printf %03d $((t % 1000)))s] $2: $3 ${4:+($4)}"
}
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# --- the sites -------------------------------------------------------------------------------
# The resource holding volume V: the group (PLAN-db), or with --separate its own (PLAN-rV);
# vol_key V is how the plan names the volume ([plan.volume."PLAN-db/V"], DRBD's addressing).
res_of() {
    local p=""
    [ $cloud = 0 ] || p=$plan-
    if [ $group = 1 ]; then echo "${p}db"; else echo "${p}r$1"; fi
}
vol_key() { if [ $group = 1 ]; then echo "$(res_of "$1")/$1"; else res_of "$1"; fi; }
all_res() { for ((v = 0; v < nvol; v++)); do res_of $v; done | uniq; } # each resource once
# The backup node holding volume V's Secondary: site-b, or site-b2 for every other volume with
# --backup-nodes 2 (the first volume, whose node runs the plan's recovery, is site-b's).
bnode() { if [ "$bnodes" = 2 ] && [ $(($1 % 2)) = 1 ]; then echo b2; else echo b; fi; }
bsites() { echo b; [ "$bnodes" = 1 ] || echo b2; }
vol_id() { printf 'd7111111-0000-4000-8000-%012d' "$1"; } # volume V's ID at the primary site
# The protection plan: B's daemon recovers it by itself (failover = "automatic") through the
# bridged cloud; the template boots a server from the first volume and attaches the others.
plan_config() { # SITE: B's copy has no schedule (see below)
    local v
    printf '\n[openstack]\nauth-url = "%s"\nusername = "admin"\npassword = "drl-admin-pw"\nproject = "admin"\n' "$KS_URL"
    printf '\n[dr]\nstate-dir = "%s/dr"\n' "$work"
    printf '\n[[plan]]\nname = "%s"\nresources = [%s]\ntemplate = "%s/plan.yaml"\n' "$plan" \
        "$(all_res | sed 's/.*/"&"/' | paste -sd, | sed 's/,/, /g')" "$work"
    printf 'cinder-host = "aio@nfs#nfs"\ncinder-export-dir = "%s"\nfailover = "automatic"\nrpo-target = "5s"\n' "$EXPORT"
    if [ "$1" = a ] && [ $snap = 1 ]; then
        # The snapshot policy, A's protection actions: snapshots and the base image to Swift.
        printf 'snapshot-every = "%s"\nkeep = 4\nsnapshot-to = "swift://%s-snap/s"\n' "$snap_every" "$plan"
        printf 'images = [{ file = "%s/a/base.img", to = "swift://%s-images/base" }]\n' "$work" "$plan"
    fi
    for ((v = 0; v < nvol; v++)); do
        printf '\n[plan.volume."%s"]\nprimary-id = "%s"\n' "$(vol_key $v)" "$(vol_id $v)"
        if [ $v = 0 ]; then printf 'bootable = true\nparameter = "boot_volume"\n'; fi
    done
}
plan_template() {
    local v
    cat <<EOF
heat_template_version: 2018-08-31
description: the drill's workload (drl-drill), its volumes by their IDs at the primary site
parameters:
  boot_volume: {type: string, default: $(vol_id 0), constraints: [{custom_constraint: cinder.volume}]}
resources:
  server:
    type: OS::Nova::Server
    properties:
      name: $plan
      flavor: m1.tiny
      block_device_mapping_v2: [{volume_id: {get_param: boot_volume}, boot_index: 0, delete_on_termination: false}]
      networks: [{allocate_network: none}]
      user_data_format: RAW
      config_drive: false
EOF
    for ((v = 1; v < nvol; v++)); do
        printf '  data_%d:\n    type: OS::Cinder::VolumeAttachment\n    properties: {instance_uuid: {get_resource: server}, volume_id: %s}\n' "$v" "$(vol_id $v)"
    done
    printf 'outputs:\n  server: {value: {get_resource: server}}\n'
}
# One config per site, the same but for the plan's schedule: B's copy has none, so once failed
# over B does not start streaming its own snapshots (protecting the workload at B again, to a
# third site, is outside the drill; those streams would compete with the recovery measured).
cfg=$work/drl.toml cfg_b=$work/drl-b.toml
cfg_of() { if [ "$1" = a ]; then echo "$cfg"; else echo "$cfg_b"; fi; } # site-b and site-b2 share one
if [ $cloud = 1 ]; then plan_template >"$work/plan.yaml"; fi
site_config() { # SITE
    for s in a $(bsites); do
        printf '[[node]]\nname = "site-%s"\nsite = "site-%s"\ncontrol-socket = "%s/site-%s.sock"\n\n' "$s" "${s:0:1}" "$work" "$s"
    done
    if [ $group = 1 ]; then
        # One resource, every volume in it: [[resource.volume]] sizes, volume.N paths per node.
        printf '[[resource]]\nname = "%s"\nsecret = "drill-secret"\n' "$(res_of 0)"
        for ((v = 0; v < nvol; v++)); do printf '[[resource.volume]]\nnumber = %d\nsize = "%s"\n' $v "$size"; done
        for s in a b; do
            addr=$([ $s = a ] && echo "$ADDR_A" || echo "$ADDR_B")
            printf '[resource.on.site-%s]\naddress = "%s:7800"\n' "$s" "$addr"
            for ((v = 0; v < nvol; v++)); do
                printf 'volume.%d = { disk = "%s/%s/r%d.img", meta = "%s/%s/r%d.meta", nbd = "%s/%s/r%d.nbd" }\n' \
                    $v "$work" $s $v "$work" $s $v "$work" $s $v
            done
        done
        echo
    fi
    for ((v = 0; v < nvol; v++)); do
        [ $group = 0 ] || break
        printf '[[resource]]\nname = "%s"\nsize = "%s"\nsecret = "drill-secret"\n' "$(res_of $v)" "$size"
        for s in a "$(bnode $v)"; do
            addr=$([ $s = a ] && echo "$ADDR_A" || echo "$ADDR_B")
            printf '[resource.on.site-%s]\naddress = "%s:%d"\n' "$s" "$addr" $((7800 + v))
            printf 'disk = "%s/%s/r%d.img"\nmeta = "%s/%s/r%d.meta"\nnbd = "%s/%s/r%d.nbd"\n' \
                "$work" $s $v "$work" $s $v "$work" $s $v
        done
        echo
    done
    printf '[stream]\nvault-dir = "%s/vault"\n\n' "$work"
    # Swift at site B (bridge-swift): tempauth answers with a storage URL on the address asked.
    if [ $snap = 1 ]; then
        printf '[swift]\nauth = "tempauth"\nurl = "http://%s:8080/auth/v1.0"\nuser = "test:tester"\nkey = "testing"\n\n' "$ADDR_B"
    fi
    printf '[detect]\ncluster = "drill"\netcd = ["http://%s:2379", "http://%s:2379", "http://%s:2379"]\nlease-ttl = "%ss"\nprobe-interval = "%s"\n\n' \
        "$ADDR_A" "$ADDR_B" "$ADDR_W" "$ttl" "$probe"
    printf '[detect.on.site-a]\nlisten = "%s:7790"\n\n[detect.on.site-b]\nlisten = "%s:7790"\n' "$ADDR_A" "$ADDR_B"
    [ "$bnodes" = 1 ] || printf '\n[detect.on.site-b2]\nlisten = "%s:7791"\nsite = "site-b"\n' "$ADDR_B"
    if [ $cloud = 1 ]; then plan_config "$1"; fi
}
site_config a >"$cfg"
site_config b >"$cfg_b"
mkdir -p "$work/a" "$work/b" "$work/b2"
if [ "$(python3 -c "print($fill > 0)")" = True ]; then
    size_bytes=$(python3 -c "
import re; m = re.fullmatch(r'(\d+)\s*([KMGT]?)(iB|B)?', '$size', re.I)
print(int(m.group(1)) * 1024 ** ' KMGT'.index((m.group(2) or ' ').upper()))") || die "cannot read --volume-size $size"
    fill_mib=$(python3 -c "print(int($size_bytes * $fill) >> 20)")
    for ((v = 0; v < nvol; v++)); do
        truncate -s "$size_bytes" "$work/a/r$v.img"
        dd if=/dev/urandom of="$work/a/r$v.img" bs=1M seek=$((size_bytes / 4 >> 20)) count="$fill_mib" conv=notrunc status=none
    done
    ev a filled "$fill_mib MiB of random data in each of A's volumes (after the workload's quarter)"
fi
if [ $snap = 1 ]; then
    # The workload's base image at A: 32 MiB, a quarter random (the rest a hole), as an image
    # copy ships it: only segments Swift lacks.
    head -c 8M /dev/urandom >"$work/a/base.img"
    truncate -s 32M "$work/a/base.img"
fi

declare -A pid
on() { local s=$1; shift; "$drl" --config "$(cfg_of "$s")" --node "site-$s" "$@"; }
# in_b CMD...: a drl command run inside site B (Swift is reached at B's address)
in_b() { ip netns exec "$NS_B" "$drl" --config "$cfg_b" --node site-b "$@"; }
start_daemon() { # SITE
    local s=$1 ns
    ns=$([ "$s" = a ] && echo "$NS_A" || echo "$NS_B") # site-b2 runs in site B too
    rm -f "$work/site-$s.sock" "$work/$s"/*.nbd
    ip netns exec "$ns" "$drl" daemon --config "$(cfg_of "$s")" --node "site-$s" 2>>"$work/$s.log" &
    pid[$s]=$!
    wait_for_socket "$work/site-$s.sock" 30 "${pid[$s]}" || die "site $s did not start: $(tail -5 "$work/$s.log")"
}
field() { # SITE RES FIELD
    on "$1" status "$2" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['resources'][0].get('$3'))"
}
dir_of() { if [ "$1" = a ]; then echo "$work/a"; else echo "$work/$(bnode "$2")"; fi; } # SITE V
socks() { # SITE (a, or b: each volume's backup node) -> --socket args
    for ((v = 0; v < nvol; v++)); do printf -- '--socket %s/r%d.nbd ' "$(dir_of "$1" $v)" $v; done
}
# wait_until WHAT SECONDS CMD... — CMD is the full predicate; prints progress while it waits.
wait_until() {
    local what=$1 secs=$2 end; shift 2
    end=$(($(date +%s) + secs))
    until "$@"; do
        [ "$(date +%s)" -lt "$end" ] || die "timed out after ${secs}s waiting for: $what"
        sleep 0.1
    done
}
in_sync() { # every resource UpToDate on both sides, nothing out of sync, A->B established
    local r
    for r in $(all_res); do
        [ "$(on a status "$r" --json | python3 -c "import json,sys; r=json.load(sys.stdin)['resources'][0]; print(r['disk'], r.get('peer_disk'), r['out_of_sync_bytes'], r['send_queue_bytes'], r['replication'])")" = "UpToDate UpToDate 0 0 Established" ] || return 1
    done
}

started_cloud=0 started_swift=0
cleanup() {
    local st=$?
    [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null
    # shellcheck disable=SC2086
    [ -n "${evtap:-}" ] && kill $evtap 2>/dev/null
    if [ $keep = 1 ]; then
        log "left running (--keep): configs $cfg (A) $cfg_b (B), logs in $work"
        return
    fi
    [ -n "${checker:-}" ] && kill "$checker" 2>/dev/null
    # The daemons first, B before A: with A stopping (a scheduled stream can hold its shutdown
    # for seconds) B would take the leases and recover the plan again, a second stack.
    for s in b2 b a; do [ -n "${pid[$s]:-}" ] && stop_pid "${pid[$s]}" 5; done
    # The shared cloud as it was: the stack deleted, the volumes unmanaged (fail back does it
    # on success; this is for a drill that stopped before), the links into $work removed.
    if [ $cloud = 1 ]; then
        /usr/bin/python3 "$here/drill_cloud.py" cleanup "$plan" "$work" 2>>"$work/cloud.log" || warn "cloud cleanup: $(tail -2 "$work/cloud.log")"
    fi
    if [ $snap = 1 ]; then # after the daemons: no stream starts again behind it
        /usr/bin/python3 "$here/drill_cloud.py" swift-cleanup "$plan-" 2>>"$work/cloud.log" || warn "Swift cleanup: $(tail -2 "$work/cloud.log")"
    fi
    for s in a b w; do ip netns pids "drl-det-$tag-$s" 2>/dev/null | xargs -r kill -9 2>/dev/null; done
    bed down >/dev/null 2>&1 || true
    if [ $started_cloud = 1 ]; then "$here/openstack-aio.sh" stop >/dev/null 2>&1 || warn "stopping the cloud failed"; fi
    if [ $started_swift = 1 ]; then "$here/swift-aio.sh" stop >/dev/null 2>&1 || warn "stopping Swift failed"; fi
    cp "$work"/*.log "$work"/*.jsonl "$work"/*.err "$work"/dr/*.journal "$out/" 2>/dev/null || true
    rm -rf "$work"
    exit $st
}
trap cleanup EXIT

# --- the backup site's cloud --------------------------------------------------------------------
# openstack-aio.sh's Keystone, asked for a token with its admin credentials.
cloud_ok() {
    local body='{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"drl-admin-pw"}}},"scope":{"project":{"name":"admin","domain":{"name":"Default"}}}}}'
    [ "$(curl -s -m 10 -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d "$body" "$KS_URL/auth/tokens")" = 201 ]
}
if [ $cloud = 1 ]; then
    "$here/openstack-aio.sh" install --nova >&2 || die "installing the OpenStack packages failed (scripts/openstack-aio.sh install --nova)"
    if ! cloud_ok; then
        log "no cloud answers at $KS_URL: starting one (scripts/openstack-aio.sh start --nova; 1-5 minutes; stopped at the end)"
        started_cloud=1
        "$here/openstack-aio.sh" start --nova >&2 || die "the cloud did not start (scripts/openstack-aio.sh start --nova; logs in /var/tmp/drl-openstack/log)"
        cloud_ok || die "the cloud started but Keystone refuses the admin login at $KS_URL"
    fi
    [ -d "$EXPORT" ] || die "$EXPORT missing: the cloud's Cinder NFS export (scripts/openstack-aio.sh start)"
fi
swift_ok() { curl -sf -o /dev/null -m 10 -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' http://127.0.0.1:8080/auth/v1.0; }
if [ $snap = 1 ] && ! swift_ok; then
    log "no Swift answers on 127.0.0.1:8080: starting one (scripts/swift-aio.sh start; stopped at the end)"
    started_swift=1
    "$here/swift-aio.sh" start >&2 || die "Swift did not start (scripts/swift-aio.sh start)"
    swift_ok || die "Swift started but refuses test:tester at http://127.0.0.1:8080/auth/v1.0"
fi

bed up >/dev/null 2>&1 || die "the three-site testbed did not come up (scripts/detect-testbed.sh up)"
if [ $cloud = 1 ]; then
    bed bridge-cloud b "$KS_URL" 2>>"$work/bridge.log" || die "the cloud bridge into site B failed: $(tail -3 "$work/bridge.log")"
fi
if [ $snap = 1 ]; then
    bed bridge-swift b 8080 2>>"$work/bridge.log" || die "serving Swift at site B failed: $(tail -3 "$work/bridge.log")"
fi
# Shape the A-B path in the router: egress towards B carries A->B, towards A carries B->A.
bps=$(python3 - "$rate" <<'PY'
import re, sys
m = re.fullmatch(r'(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)?', sys.argv[1].lower())
if not m: sys.exit("bad --rate " + sys.argv[1] + " (use e.g. 100mbit)")
n = float(m.group(1)) * {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}[m.group(2)]
print(int(n * (8 if m.group(3) == 'bps' else 1)))
PY
) || die "bad --rate $rate"
burst=$((bps / 8 / 250)); [ "$burst" -ge 32768 ] || burst=32768
for s in a b; do tc -n "$NS_R" qdisc replace dev "r$s" root tbf rate "${bps}bit" burst "$burst" latency 100ms; done
ev - sites-up "site-a $ADDR_A, site-b $ADDR_B ($bnodes storage node(s)), witness $ADDR_W; A-B shaped to $rate"
start_etcd() { # SITE
    bed etcd "$1" "$work/etcd-$1" >"$work/etcd-$1.log" 2>&1 &
}
for s in a b w; do start_etcd $s; done
etcd_ok() { ip netns exec "$NS_B" etcdctl --endpoints "http://$ADDR_A:2379,http://$ADDR_B:2379,http://$ADDR_W:2379" endpoint health >/dev/null 2>&1; }
wait_until "etcd: all three members healthy" 60 etcd_ok
ev - etcd-up "one member per site, lease TTL ${ttl}s"
# etcd's leader by site (a, b or w), from the members' own status.
etcd_leader_site() {
    ip netns exec "$NS_B" etcdctl --endpoints "http://$ADDR_A:2379,http://$ADDR_B:2379,http://$ADDR_W:2379" \
        endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
st = json.load(sys.stdin)
site = dict(zip(sys.argv[1:4], "abw"))
lead = st[0]["Status"]["leader"]
print(next((site.get(e["Endpoint"].split("//")[1].split(":")[0], "?") for e in st
            if e["Status"]["header"]["member_id"] == lead), "?"))' "$ADDR_A" "$ADDR_B" "$ADDR_W"
}
# --etcd-leader witness (the default): etcd's leader moved to the witness's member, as an
# operator keeps it there. A site failure then never costs a leader election, after which the
# new leader renews every lease for a full TTL (etcd's rule), which would delay B's takeover.
if [ "$etcd_leader" = witness ]; then
    leader_at_w() { [ "$(etcd_leader_site)" = w ]; }
    if ! leader_at_w; then
        wid=$(ip netns exec "$NS_B" etcdctl --endpoints "http://$ADDR_W:2379" endpoint status -w json |
            python3 -c 'import json, sys; print("%x" % json.load(sys.stdin)[0]["Status"]["header"]["member_id"])')
        ip netns exec "$NS_B" etcdctl --endpoints "http://$ADDR_A:2379,http://$ADDR_B:2379,http://$ADDR_W:2379" \
            move-leader "$wid" >"$work/etcd-move-leader.out" 2>&1 || die "etcdctl move-leader to the witness: $(cat "$work/etcd-move-leader.out")"
    fi
    wait_until "etcd's leader at the witness" 30 leader_at_w
    ev - etcd-leader "at the witness (--etcd-leader witness)"
fi
start_daemon a
for s in $(bsites); do start_daemon "$s"; done
# B's own record of what it saw: site health, leases, promotions (JSON lines with times), from
# each of its nodes (the plan's events come from site-b, which runs its recovery).
evtap=""
for s in $(bsites); do
    on "$s" events --json >"$work/events-$s.jsonl" 2>/dev/null &
    evtap+=" $!"
done
for r in $(all_res); do on a primary "$r" --force >/dev/null; done
ev a primary "$(all_res | tr '\n' ' ')"
wait_until "initial sync" 600 in_sync
ev - in-sync "initial sync done"
if [ $cloud = 1 ]; then
    # Checked (resources replicate, the template parses and holds every primary-id) and
    # checkpointed, at the backup site, as an admin would before any disaster.
    on b dr protect "$plan" >"$work/protect.out" 2>&1 || die "drl dr protect $plan: $(cat "$work/protect.out")"
    ev b protected "plan $plan: $nvol volumes$([ $group = 0 ] || echo " in group $(res_of 0)"), server booted from $(vol_key 0), failover automatic"
fi
if [ $snap = 1 ]; then
    # The snapshot policy in its steady state before the disaster: A's first (full) snapshot of
    # every volume and the base image in Swift, as the plan's recorded actions show them.
    protected_in_swift() {
        on b dr plan show "$plan" --json >"$work/plan-show.json" 2>/dev/null || return 1
        # shellcheck disable=SC2046
        /usr/bin/python3 "$here/drill_snap.py" ready "$work/plan-show.json" $(all_res) 2>/dev/null
    }
    wait_until "A's first snapshot of every volume and the base image in Swift (A's log: $work/a.log)" 600 protected_in_swift
    ev a protection-ready "a snapshot of every volume and the base image in Swift; snapshots every $snap_every from here"
fi

# --- the workload, and the kill ----------------------------------------------------------------
wlog=$work/writer-a.log
# The workload spreads over the first quarter of each volume: the fail back must resync only that.
span_blocks=$(( $(on a status "$(res_of 0)" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['resources'][0]['size_bytes'])") / 4096 / 4 ))
[ "$span_blocks" -le 16384 ] || span_blocks=16384
# shellcheck disable=SC2046
ip netns exec "$NS_A" "$drill" write $(socks a) --log "$wlog" --rate "$writer_rate" --seed "$seed" --blocks "$span_blocks" \
    >"$work/writer-a.out" 2>&1 &
writer=$!
ev a workload-start "$writer_rate writes/s over $nvol volumes"
# A's own record of lag and send queue, every 100 ms, until the kill.
(
    while :; do
        on a status --json 2>/dev/null | python3 -c "
import json,sys,time
for r in json.load(sys.stdin)['resources']:
    print(time.time_ns(), r['name'], r.get('lag_ms') or 0, r.get('send_queue_bytes') or 0)" 2>/dev/null || true
        sleep 0.1
    done
) >"$work/lag-a.txt" &
sampler=$!
if [ $short = 1 ]; then run_ms=$((1500 + RANDOM % 1500)); else run_ms=$((3000 + RANDOM % 5000)); fi
# The workload runs for a random time: sleeping here is the experiment's clock, not a wait.
sleep "$(awk "BEGIN{print $run_ms/1000}")"

kill -0 "$writer" 2>/dev/null || die "the workload stopped before the kill: $(cat "$work/writer-a.out")"
leader_at_kill=$(etcd_leader_site || echo "?")
t_kill=$(date +%s%N)
bed kill-site a
kill "$sampler" 2>/dev/null; sampler=""
wait "${pid[a]}" 2>/dev/null || true; unset 'pid[a]'
wait "$writer" 2>/dev/null || true
ev_at "$((t_kill / 1000000))" a killed "after ${run_ms} ms of workload; daemon, writer and etcd member SIGKILLed, link down"
# From the kill on, B's volumes are read as soon as B serves them writable (Primary): the
# first answered read is the data's RTO, and what it reads is the verdict's input.
# shellcheck disable=SC2046
"$drill" check --log "$wlog" $(socks b) --json --wait 300 >"$work/check-b.json" 2>"$work/check-b.err" &
checker=$!
lag_at_kill=$(awk 'BEGIN{m=0} {if ($3>m) m=$3} END{print m}' <(tail -n $((nvol * 3)) "$work/lag-a.txt"))
ev a lag-at-kill "${lag_at_kill} ms (A's last samples)"

# --- detection, lease, promotion, recovery: nothing is touched ---------------------------------
primary_at_b() {
    local v
    for ((v = 0; v < nvol; v++)); do [ "$(field "$(bnode $v)" "$(res_of $v)" role)" = Primary ] || return 1; done
}
wait_until "B promoted itself (detection, lease in etcd)" $((60 + 4 * ttl)) primary_at_b
t_promote=$(date +%s%N)
# B's plan events: the automatic failover ends in failed-over (or keeps failing: reported).
# A failed run is retried by the daemon from its journal; each failure is shown as it comes.
plan_errors=0
plan_done() {
    local n
    n=$(grep -c '"failover-error"' "$work/events-b.jsonl" 2>/dev/null || true)
    if [ "${n:-0}" -gt "$plan_errors" ]; then
        plan_errors=$n
        warn "B's automatic failover stopped (the daemon retries): $(grep '"failover-error"' "$work/events-b.jsonl" | tail -1)"
    fi
    grep '"failed-over"' "$work/events-b.jsonl" 2>/dev/null | grep -q '"object":"plan"'
}
if [ $cloud = 1 ]; then
    wait_until "B's daemon recovered plan $plan (Cinder import, Heat stack; B's log: $work/b.log)" 600 plan_done
fi
# Times from B's own events (unix ms): first suspicion of site-a, last lease taken, last
# promoted, the failover's start and end; and from the recovery journal each step's begin/done.
# With two backup nodes: the first suspicion by either, the last lease and promotion of both.
python3 - "$((t_kill / 1000000))" "$work/dr/$plan.journal" "$work"/events-b*.jsonl >"$work/times.txt" <<'PY'
import json, sys
kill = int(sys.argv[1]); t = {"susp": 0, "lease": 0, "prom": 0, "fo_start": 0, "fo_done": 0}
lines = [l for f in sys.argv[3:] for l in open(f)]
for line in lines:
    try: e = json.loads(line)
    except ValueError: continue
    ts, f = e.get("time_unix_ms", 0), e.get("fields", {})
    if ts < kill: continue
    if e.get("object") == "site" and e.get("name") == "site-a" and f.get("health") == "suspected": t["susp"] = min(t["susp"] or ts, ts)
    if e.get("object") == "lease" and f.get("action") == "takeover": t["lease"] = max(t["lease"], ts)
    if e.get("object") == "lease" and f.get("action") == "promoted": t["prom"] = max(t["prom"], ts)
    if e.get("object") == "plan" and f.get("state") == "failing-over" and not t["fo_start"]: t["fo_start"] = ts
    if e.get("object") == "plan" and f.get("state") == "failed-over": t["fo_done"] = ts
# Journal: each step from its last begin to its done (as drl's own report times it); the
# import of all volumes from the first import's begin to the last one's done.
last_begin, steps = {}, {}
try:
    for line in open(sys.argv[2]):
        try: r = json.loads(line)
        except ValueError: continue
        if r.get("op") != "recover": continue
        if r["phase"] == "begin": last_begin[r["step"]] = r["ts_ms"]
        if r["phase"] == "done" and r["step"] in last_begin: steps[r["step"]] = (last_begin[r["step"]], r["ts_ms"])
except FileNotFoundError:
    pass
imports = [v for k, v in steps.items() if k.startswith("import:")]
if imports: steps["import"] = (min(b for b, _ in imports), max(d for _, d in imports))
for k in ("check", "promote", "import", "rewrite", "stack"):
    b, d = steps.get(k, (0, 0))
    t[k + "_b"], t[k + "_d"] = b, d
print(" ".join(f"{k}={v}" for k, v in t.items()))
PY
declare -A T
for kv in $(cat "$work/times.txt"); do T[${kv%%=*}]=${kv#*=}; done
[ "${T[susp]}" != 0 ] || die "B never reported site-a suspected (events in $work/events-b.jsonl)"
[ "${T[prom]}" != 0 ] || T[prom]=$((t_promote / 1000000))
kill_ms=$((t_kill / 1000000))
ev_at "${T[susp]}" b suspected "site-a suspected by B's pingers ($((T[susp] - kill_ms)) ms after the kill)"
[ "${T[lease]}" = 0 ] || ev_at "${T[lease]}" b lease-taken "A's lease expired in etcd; B holds every resource's key ($((T[lease] - kill_ms)) ms)"
ev_at "${T[prom]}" b promoted "automatically, by the lease holder ($((T[prom] - kill_ms)) ms after the kill)"
if [ $cloud = 1 ]; then
    ev_at "${T[fo_start]}" b failover-start "B's daemon starts recovering plan $plan ($((T[fo_start] - kill_ms)) ms)"
    for k in check promote import rewrite stack; do
        [ "${T[${k}_d]}" != 0 ] || die "the recovery journal has no finished $k step ($work/dr/$plan.journal)"
    done
    ev_at "${T[check_d]}" b recovery-check "Keystone login, every lease held here ($((T[check_d] - T[check_b])) ms)"
    ev_at "${T[import_d]}" b imported "$nvol volumes managed by Cinder ($((T[import_d] - T[import_b])) ms)"
    ev_at "${T[stack_d]}" b stack-complete "Heat CREATE_COMPLETE: server booted from the imported $(vol_key 0) ($((T[stack_d] - T[stack_b])) ms; $((T[stack_d] - kill_ms)) ms after the kill)"
fi

# --- the verdict --------------------------------------------------------------------------------
wait "$checker" || true; checker=""
[ -s "$work/check-b.json" ] || die "reading B's volumes failed: $(cat "$work/check-b.err")"
verdict() { # CHECK.json -> "prefix group_prefix lost lost_bytes rpo_s first_read_ns acked"
    # (first_read_ns: when every volume had answered a read: the last volume's first read)
    python3 - "$1" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
print(v["prefix"], v["group_prefix"], v["lost_writes"], v["lost_bytes"], v["rpo_seconds"], v.get("all_read_ns") or v["first_read_ns"], v["writes_acked"])
for vol in v["volumes"]:
    for x in vol["violations"][:5]:
        print("violation:", x, file=sys.stderr)
PY
}
read -r prefix group_prefix lost lost_bytes rpo_s first_read_ns acked < <(verdict "$work/check-b.json")
ev_at "$((first_read_ns / 1000000))" b first-read "all $nvol of B's volumes read through drl's NBD export, writable ($(((first_read_ns - t_kill) / 1000000)) ms after the kill)"
[ "$prefix" = True ] || die "B's volumes are NOT a prefix of the acknowledged writes (see $work/check-b.json)"
# A group's volumes are one image: together they must hold one prefix (one cut for all).
[ $group = 0 ] || [ "$group_prefix" = True ] ||
    die "B's volumes of group $(res_of 0) are each a prefix but NOT one prefix together (see $work/check-b.json)"
ev b verified "prefix of the writer's log: lost $lost of $acked acknowledged writes ($lost_bytes bytes, ${rpo_s} s)"
rpo_ok=$(python3 -c "print($rpo_s * 1000 <= $lag_at_kill + 200)")
[ "$rpo_ok" = True ] || die "RPO ${rpo_s}s exceeds the lag A reported at the kill (${lag_at_kill} ms, +200 ms sampling)"
if [ $cloud = 1 ]; then
    # What Cinder and Heat say, from their own APIs: the stack on the imported volumes.
    /usr/bin/python3 "$here/drill_cloud.py" verify "$plan" "$nvol" "$work/recovery.json" "$(vol_key 0)" 2>"$work/verify.err" ||
        die "the recovered stack is not what the plan asked for: $(cat "$work/verify.err")"
    ev b stack-verified "$(python3 -c "import json; r=json.load(open('$work/recovery.json')); print('stack', r['stack_id'], r['stack_status'], '- server', r['server_id'], 'boots from', r['boot_volume'])")"
    # The imported volumes read the way Cinder's own target serves them (the files it manages):
    # the same data, the same verdict.
    # shellcheck disable=SC2046
    "$drill" check --log "$wlog" $(python3 -c "
import json; r = json.load(open('$work/recovery.json'))
print(' '.join('--file $EXPORT/volume-' + v['cinder_id'] for v in r['volumes']))") --json >"$work/check-cinder.json" 2>"$work/check-cinder.err" ||
        die "the imported volumes, read as Cinder serves them: $(cat "$work/check-cinder.err")"
    read -r c_prefix c_group c_lost _ <<<"$(verdict "$work/check-cinder.json")"
    [ "$c_prefix" = True ] && [ "$c_lost" = "$lost" ] && [ "$c_group" = "$group_prefix" ] || die "the imported volumes differ from drl's export at B (prefix $c_prefix, lost $c_lost, not $lost)"
    ev b imported-read "the imported volumes hold the same prefix (lost $c_lost)"
fi

# --- the same kill under the snapshot policy ------------------------------------------------------
# Run after replication's recovery, not beside it, so neither's times carry the other's load.
# The decision is the same (A suspected, its leases expired); from there the policy restores
# the newest snapshot of each volume that was complete in Swift before the kill.
if [ $snap = 1 ]; then
    on b dr plan show "$plan" --json >"$work/plan-show.json" 2>"$work/plan-show.err" ||
        die "drl dr plan show $plan at B: $(cat "$work/plan-show.err")"
    while IFS='|' read -r t e d; do ev_at "$t" a "$e" "$d"; done < <(/usr/bin/python3 "$here/drill_snap.py" timeline "$work/plan-show.json" "$kill_ms")
    # shellcheck disable=SC2046
    /usr/bin/python3 "$here/drill_snap.py" pick "$work/plan-show.json" "$kill_ms" $(all_res) >"$work/snap-pick.txt" ||
        die "the snapshot policy has nothing to restore (A streamed no snapshot of every volume before the kill; $work/a.log)"
    mkdir -p "$work/snap"
    t_rs=$(date +%s%N)
    rpids=()
    v=0
    while read -r r url _ _ _; do
        # A group's snapshot restores whole (its record read first) into snap/RES-N.img.
        to=$work/snap/r$v.img
        [ $group = 0 ] || to=$work/snap/
        in_b restore "$url" --to "$to" --json >"$work/restore-r$v.json" 2>"$work/restore-r$v.err" &
        rpids+=($!)
        v=$((v + 1))
    done <"$work/snap-pick.txt"
    for ((v = 0; v < ${#rpids[@]}; v++)); do
        wait "${rpids[$v]}" || die "drl restore of $(res_of $v) from Swift: $(tail -3 "$work/restore-r$v.err")"
    done
    if [ $group = 1 ]; then
        for ((v = 0; v < nvol; v++)); do mv "$work/snap/$(res_of 0)-$v.img" "$work/snap/r$v.img"; done
    fi
    restore_ms=$(ms_since "$t_rs")
    snap_oldest_ms=$(awk 'NR == 1 || $3 < m {m = $3} END {print m}' "$work/snap-pick.txt")
    decision_ms=$(( (T[lease] != 0 ? T[lease] : T[prom]) - kill_ms ))
    snap_data_ms=$((decision_ms + restore_ms))
    ev b snapshot-restored "$nvol volumes from Swift ($(awk '{printf "%s%s", (NR > 1 ? ", " : ""), $2}' "$work/snap-pick.txt")) in $restore_ms ms: the snapshot policy's data $snap_data_ms ms after the kill"
    # shellcheck disable=SC2046
    "$drill" check --log "$wlog" $(for ((v = 0; v < nvol; v++)); do printf -- '--file %s/snap/r%d.img ' "$work" $v; done) --json \
        >"$work/check-snap.json" 2>"$work/check-snap.err" || true
    [ -s "$work/check-snap.json" ] || die "reading the restored volumes failed: $(cat "$work/check-snap.err")"
    read -r s_prefix s_group s_lost s_lost_bytes s_rpo_s _ _ < <(verdict "$work/check-snap.json")
    [ "$s_prefix" = True ] || die "the volumes restored from Swift are NOT a prefix of the acknowledged writes ($work/check-snap.json)"
    [ $group = 0 ] || [ "$s_group" = True ] ||
        die "the group restored from Swift is NOT one prefix across its volumes ($work/check-snap.json)"
    # Every write acknowledged before a snapshot was taken is in it: the loss spans at most
    # from the oldest chosen snapshot to the kill.
    [ "$(python3 -c "print($s_rpo_s * 1000 <= $kill_ms - $snap_oldest_ms + 200)")" = True ] ||
        die "the snapshot policy lost ${s_rpo_s}s of writes, more than the $((kill_ms - snap_oldest_ms)) ms since its snapshot"
    ev b snapshot-verified "prefix of the writer's log: lost $s_lost acknowledged writes ($s_lost_bytes bytes, ${s_rpo_s} s; the snapshot was $((kill_ms - snap_oldest_ms)) ms old)"
    # The base image as Swift holds it: the copy A made, byte for byte.
    in_b image pull "swift://$plan-images/base" --to "$work/base.pulled" >"$work/image-pull.out" 2>&1 ||
        die "drl image pull of the base image from Swift: $(tail -3 "$work/image-pull.out")"
    cmp -s "$work/a/base.img" "$work/base.pulled" || die "the base image in Swift differs from A's"
    ev b image-verified "the base image pulled from Swift is A's, byte for byte"
    rm -f "$work/base.pulled" "$work"/snap/*.img
fi

# --- fail back ---------------------------------------------------------------------------------
blog=$work/writer-b.log
# shellcheck disable=SC2046
"$drill" write $(socks b) --log "$blog" --rate "$writer_rate" --duration 2 --seed $((seed + 1)) --blocks "$span_blocks" >"$work/writer-b.out" 2>&1
ev b workload "$(cat "$work/writer-b.out")"
bed revive-site a
start_etcd a
start_daemon a
ev a restarted "comes up Secondary"
t_fb=$(date +%s%N)
wait_until "A resynced from B" 600 sh -c "for r in $(all_res | tr '\n' ' '); do [ \"\$('$drl' --config '$cfg' --node site-a status \$r --json | python3 -c 'import json,sys; r=json.load(sys.stdin)[\"resources\"][0]; print(r[\"disk\"], r[\"replication\"])')\" = 'UpToDate Established' ] || exit 1; done"
resynced=0
for r in $(all_res); do resynced=$((resynced + $(field a "$r" resync_bytes_received))); done
ev a resynced "$resynced bytes received for $nvol x $size ($(ms_since "$t_fb") ms)"
[ "$resynced" -le $((nvol * span_blocks * 4096)) ] || die "fail back resynced $resynced bytes: more than the $((nvol * span_blocks * 4096)) bytes the workloads wrote"
if [ $cloud = 1 ]; then
    # The plan's own fail back: the stack deleted and the volumes unmanaged (the workload
    # stops: the admin's word), digests compared where Cinder could have written around drl,
    # B demoted once in sync, A promoted.
    t_fbk=$(date +%s%N)
    on b dr failback "$plan" --stop-workload --json >"$work/failback.json" 2>"$work/failback.err" ||
        die "drl dr failback $plan: $(cat "$work/failback.err")"
    differing=$(python3 -c "import json; f=json.load(open('$work/failback.json')); print(sum(int(v.get('differing_bytes') or 0) for v in (f.get('verified') or {}).values()))")
    ev - failback "drl dr failback: stack deleted, volumes unmanaged, digests compared ($differing bytes differed), B Secondary, A Primary ($(ms_since "$t_fbk") ms)"
    [ "$differing" = 0 ] || die "$differing bytes differed between A and B after the resync: nothing wrote around drl in the drill"
else
    # planned switchover: writers stopped (done), B demoted once in sync, A promoted
    for ((v = 0; v < nvol; v++)); do
        [ $group = 0 ] || [ $v = 0 ] || break # a group is demoted once
        on "$(bnode $v)" secondary "$(res_of $v)" >/dev/null
    done
    for r in $(all_res); do on a primary "$r" >/dev/null; done
    ev a switchover "B Secondary, A Primary"
fi
# shellcheck disable=SC2046
"$drill" check --log "$blog" $(socks a) --no-loss --only-written >"$work/check-a.txt" || die "switchover lost writes: $(cat "$work/check-a.txt")"
ev a verified "every write acknowledged at B is at A: switchover RPO 0"
for ((v = 0; v < nvol; v++)); do
    # (sparse_cmp: cmp that reads only where either file has data; a 10 GiB cmp took minutes)
    /usr/bin/python3 "$here/sparse_cmp.py" "$work/a/r$v.img" "$(dir_of b $v)/r$v.img" >"$work/cmp.out" ||
        die "$(vol_key $v) differs between A and B after the switchover: $(cat "$work/cmp.out")"
done
ev - identical "A and B byte-identical"

# --- report -------------------------------------------------------------------------------------
{ head -1 "$events"; tail -n +2 "$events" | sort -t, -k1,1n; } >"$out/timeline.csv"
cp "$work/check-b.json" "$out/check-b.json"
for f in recovery.json check-cinder.json failback.json; do [ ! -f "$work/$f" ] || cp "$work/$f" "$out/"; done
[ ! -f "$work/dr/$plan.journal" ] || cp "$work/dr/$plan.journal" "$out/recovery.journal"
detect_ms=$((T[susp] - kill_ms))
promote_ms=$((T[prom] - kill_ms))
read_ms=$(((first_read_ns - t_kill) / 1000000))
stack_steps_ms=0 # replication's Cinder import, rewrite and Heat steps: the same for both policies
[ $cloud = 0 ] || stack_steps_ms=$((T[import_d] - T[import_b] + T[rewrite_d] - T[rewrite_b] + T[stack_d] - T[stack_b]))
# summary.json: the numbers the report prints, for tests and the benchmark.
python3 - >"$out/summary.json" <<PY
import json
T = {$(for k in "${!T[@]}"; do printf '"%s": %s, ' "$k" "${T[$k]}"; done)}
kill = $kill_ms
def d(a, b): return (T[b] - T[a]) if T.get(a) and T.get(b) else None
print(json.dumps({
  "plan": "$plan" if $cloud else None, "seed": $seed, "rate": "$rate", "probe_interval": "$probe", "lease_ttl_s": $ttl, "volumes": $nvol, "volume_size": "$size", "fill": $fill,
  "writes_acked": $acked, "lost_writes": $lost, "lost_bytes": $lost_bytes, "rpo_seconds": $rpo_s,
  "etcd_leader_at_kill": "$leader_at_kill", "lag_at_kill_ms": $lag_at_kill, "prefix": "$prefix" == "True", "group_prefix": "$group_prefix" == "True",
  "group": "$(res_of 0)" if $group else None,
  "backup_nodes": {$(for ((v = 0; v < nvol; v++)); do printf '"%s": "site-%s", ' "$(res_of $v)" "$(bnode $v)"; done)},
  "kill_to_suspected_ms": $detect_ms, "kill_to_promoted_ms": $promote_ms, "kill_to_first_read_ms": $read_ms,
  "kill_to_stack_complete_ms": (T["stack_d"] - kill) if T.get("stack_d") else None,
  "steps_ms": {"suspicion": $detect_ms, "decision": d("susp", "lease"), "promote": d("lease", "prom"),
               "failover_start": d("lease", "fo_start"), "check": d("check_b", "check_d"),
               "import": d("import_b", "import_d"), "rewrite": d("rewrite_b", "rewrite_d"),
               "stack": d("stack_b", "stack_d")},
  "failback_resync_bytes": $resynced, "switchover_rpo_writes": 0,
  "snapshot_policy": {
    "snapshot_every": "$snap_every", "snapshot_age_ms": $kill_ms - ${snap_oldest_ms:-0},
    "lost_writes": ${s_lost:-0}, "lost_bytes": ${s_lost_bytes:-0}, "rpo_seconds": ${s_rpo_s:-0},
    "prefix": "${s_prefix:-}" == "True", "group_prefix": "${s_group:-}" == "True", "decision_ms": ${decision_ms:-0}, "restore_ms": ${restore_ms:-0},
    "kill_to_restored_ms": ${snap_data_ms:-0},
    "kill_to_stack_estimate_ms": ${snap_data_ms:-0} + $stack_steps_ms,
  } if $snap else None,
}))
PY
ms() { [ "${1:-0}" != 0 ] && [ "${2:-0}" != 0 ] && echo "$(($2 - $1)) ms" || echo "-"; }
{
    echo "# drl disaster drill"
    echo
    echo "seed $seed, link $rate, $nvol volumes of $size, writer $writer_rate writes/s, lease TTL ${ttl}s, $(date -u +%FT%TZ)"
    echo
    [ $group = 0 ] || echo "consistency group $(res_of 0): $nvol volumes, one write order, promoted and snapshotted at one point in time"
    [ $group = 0 ] || echo
    echo "backup nodes at site B: $(for ((v = 0; v < nvol; v++)); do [ $group = 0 ] || [ $v = 0 ] || break; printf '%s%s on site-%s' "$([ $v = 0 ] || echo ', ')" "$(res_of $v)" "$(bnode $v)"; done)"
    echo
    echo "| measure | value |"
    echo "|---|---:|"
    echo "| acknowledged writes before the kill | $acked |"
    echo "| lost acknowledged writes (RPO) | $lost ($lost_bytes bytes) |"
    echo "| RPO time span | ${rpo_s} s |"
    echo "| lag A reported at the kill | ${lag_at_kill} ms |"
    echo "| B's volumes a prefix of the log | $prefix (one cut for all: $group_prefix) |"
    echo "| kill -> site A suspected at B (suspicion) | ${detect_ms} ms |"
    echo "| suspected -> B holds every lease (decision) | $(ms "${T[susp]}" "${T[lease]}") |"
    echo "| lease -> promoted at B (promote) | $(ms "${T[lease]}" "${T[prom]}") |"
    echo "| kill -> promoted at B | ${promote_ms} ms |"
    echo "| kill -> first read at B, writable (RTO, data) | ${read_ms} ms |"
    if [ $cloud = 1 ]; then
        echo "| lease -> automatic failover starts | $(ms "${T[lease]}" "${T[fo_start]}") |"
        echo "| recovery check (Keystone login, leases) | $(ms "${T[check_b]}" "${T[check_d]}") |"
        echo "| recovery promote (orchestrator) | $(ms "${T[promote_b]}" "${T[promote_d]}") |"
        echo "| import into Cinder ($nvol volumes) | $(ms "${T[import_b]}" "${T[import_d]}") |"
        echo "| template rewrite | $(ms "${T[rewrite_b]}" "${T[rewrite_d]}") |"
        echo "| Heat stack to CREATE_COMPLETE (stack) | $(ms "${T[stack_b]}" "${T[stack_d]}") |"
        echo "| kill -> stack CREATE_COMPLETE (RTO, workload) | $((T[stack_d] - kill_ms)) ms |"
        echo "| stack on the imported volumes | checked (Heat, Cinder: server boots from $(vol_key 0)'s import, all in-use) |"
    else
        echo "| Cinder import + Heat stack | not driven (--no-cloud) |"
    fi
    echo "| fail back resync | $resynced bytes of $nvol x $size |"
    echo "| switchover RPO | 0 (checked) |"
    echo
    if [ $snap = 1 ]; then
        echo "## Replication against the snapshot policy, the same kill"
        echo
        echo "Snapshot policy: a snapshot of every volume each $snap_every at A, streamed to Swift at B"
        echo "(incremental); restored at B from the newest one complete before the kill (\`drl restore\`,"
        echo "$nvol at once). Its RTO to the workload adds this run's import + rewrite + stack steps"
        echo "(${stack_steps_ms} ms, the same for both policies; not a second stack)."
        echo
        echo "| policy | lost writes | lost bytes | RPO span | kill -> data readable | kill -> CREATE_COMPLETE |"
        echo "|---|---:|---:|---:|---:|---:|"
        echo "| replication (protocol A) | $lost | $lost_bytes | ${rpo_s} s | ${read_ms} ms (first writable read) | $((T[stack_d] - kill_ms)) ms |"
        echo "| snapshots to Swift every $snap_every | $s_lost | $s_lost_bytes | ${s_rpo_s} s (snapshot $((kill_ms - snap_oldest_ms)) ms old) | ${snap_data_ms} ms (decision ${decision_ms} + restore ${restore_ms}) | $((snap_data_ms + stack_steps_ms)) ms (estimate) |"
        echo
    fi
    echo "## Timeline"
    echo
    echo "| t (ms) | site | event | detail |"
    echo "|---:|---|---|---|"
    tail -n +2 "$out/timeline.csv" | while IFS=, read -r t s e d; do echo "| $t | $s | $e | ${d//\"/} |"; done
} >"$out/timeline.md"
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    /usr/bin/python3 "$here/drill_plot.py" "$out/timeline.csv" "$out/timeline.png" || warn "plot failed"
else
    warn "no python3-matplotlib: no timeline.png (apt-get install python3-matplotlib)"
fi
cat "$out/timeline.md"
log "report in $out"
