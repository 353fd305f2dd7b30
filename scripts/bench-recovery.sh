#!/usr/bin/env bash
# Recovery time, the paper's Figure 11: drl's recovery (`drl dr recover`: promote the
# replicas, Cinder manage-existing, template rewrite, Heat) against the snapshot policy (new
# Cinder volumes, `drl restore` of the newest snapshot from Swift into each, the same stack),
# for 1, 5 and 10 GiB volumes (one per plan) and for 1, 4 and 16 volumes of 1 GiB per plan.
#
#   scripts/bench-recovery.sh                  # all cases, FILL=0.25 of each volume random data
#   SIZES="1 5" COUNTS="" FILL=0.5 scripts/bench-recovery.sh   # an empty list skips that sweep
#   WORKLOAD=volumes scripts/bench-recovery.sh # a stack of OS::Heat::Value (no Nova)
#   RESTORES=4                                 # the snapshot policy's restores at once
#
# Runs against the cloud on this host (scripts/openstack-aio.sh start --nova: Keystone on
# :5050, Cinder with the NFS driver, Heat, Nova fake) and Swift (scripts/swift-aio.sh start,
# tempauth on :8080); fails saying so when they are not there. Per case: two daemons on this
# host (a1 = primary site, b1 = backup site, as tests/dr_recover.rs), N resources of S GiB
# (sparse), FILL x S of random data written at a1 through NBD and replicated; a snapshot of
# each streamed from a1 to Swift (the snapshot policy's protection, its time is reported); a1
# killed with -9; then, timed from the decision: drl's recovery at b1, and the snapshot
# policy's recovery of the same template. Every stack, volume, link and Swift object a case
# created is removed before the next.
# Results: bench-results/recovery-TIMESTAMP.{md,csv,png}, with the machine's load.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root (Cinder's share is root's)"
need_pkgs nbdcopy:libnbd-bin
[ -x /usr/bin/python3 ] || need_pkgs python3:python3
# Debian's python3 (its python3-matplotlib), whatever python3 comes first on PATH.
python3() { /usr/bin/python3 "$@"; }
python3 -c 'import matplotlib' 2>/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-matplotlib >&2 ||
    die "python3-matplotlib is missing and could not be installed"
SIZES=${SIZES-"1 5 10"}
COUNTS=${COUNTS-"1 4 16"}
FILL=${FILL:-0.25}
WORKLOAD=${WORKLOAD:-server}
EXPORT=/var/tmp/drl-openstack/export
drl=$(drl_bin)
top=$(repo_root)
py="$here/bench_recovery.py"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$top/bench-results"
csv="$top/bench-results/recovery-$stamp.csv"
md="$top/bench-results/recovery-$stamp.md"
png="$top/bench-results/recovery-$stamp.png"

python3 -c "
import sys; sys.path.insert(0, '$here'); import bench_recovery as b; b.Cloud()" 2>/dev/null ||
    die "the OpenStack cloud is not answering on 127.0.0.1:5050: scripts/openstack-aio.sh start --nova"
curl -fsS -o /dev/null -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' http://127.0.0.1:8080/auth/v1.0 ||
    die "Swift is not answering on 127.0.0.1:8080: scripts/swift-aio.sh start"
[ -d "$EXPORT" ] || die "$EXPORT missing: scripts/openstack-aio.sh start"

uuid() { python3 -c 'import uuid; print(uuid.uuid4())'; }

# template N ID... — the workload's HOT: a server booted from the first volume (a stack
# parameter whose default is its primary ID), the others attached by value.
template() {
    local n=$1 i
    shift
    printf 'heat_template_version: 2018-08-31\nparameters:\n'
    printf '  boot_volume: {type: string, default: %s, constraints: [{custom_constraint: cinder.volume}]}\nresources:\n' "$1"
    if [ "$WORKLOAD" = server ]; then
        printf '  server:\n    type: OS::Nova::Server\n    properties:\n      flavor: m1.tiny\n'
        printf '      block_device_mapping_v2: [{volume_id: {get_param: boot_volume}, boot_index: 0, delete_on_termination: false}]\n'
        printf '      networks: [{allocate_network: none}]\n      config_drive: false\n'
        for ((i = 2; i <= n; i++)); do
            printf '  attach%d:\n    type: OS::Cinder::VolumeAttachment\n    properties:\n      instance_uuid: {get_resource: server}\n      volume_id: %s\n' "$i" "${!i}"
        done
    else
        printf '  refs:\n    type: OS::Heat::Value\n    properties:\n      type: json\n      value: {boot: {get_param: boot_volume}'
        for ((i = 2; i <= n; i++)); do printf ', v%d: %s' "$i" "${!i}"; done
        printf '}\n'
    fi
}

# config W TAG N SIZE_GIB IDS... — nodes a1 (site a) and b1 (site b), N resources, the plan.
config() {
    local w=$1 tag=$2 n=$3 s=$4 i node
    shift 4
    for node in a1 b1; do
        printf '[[node]]\nname = "%s"\nsite = "%s"\ncontrol-socket = "%s/%s.sock"\n\n' "$node" "${node:0:1}" "$w" "$node"
    done
    for ((i = 0; i < n; i++)); do
        printf '[[resource]]\nname = "%s-r%d"\nsize = "%sGiB"\nsecret = "bench-%d"\n' "$tag" "$i" "$s" "$i"
        for node in a1 b1; do
            printf '[resource.on.%s]\naddress = "127.0.0.1:%s"\ndisk = "%s/%s-%d.img"\nmeta = "%s/%s-%d.meta"\nnbd = "%s/%s-%d.nbd"\n' \
                "$node" "$(free_port)" "$w" "$node" "$i" "$w" "$node" "$i" "$w" "$node" "$i"
        done
        printf '\n'
    done
    printf '[openstack]\nauth-url = "http://127.0.0.1:5050/v3"\nusername = "admin"\npassword = "drl-admin-pw"\nproject = "admin"\n\n'
    printf '[swift]\nauth = "tempauth"\nurl = "http://127.0.0.1:8080/auth/v1.0"\nuser = "test:tester"\nkey = "testing"\n\n'
    printf '[stream]\nvault-dir = "%s/vault"\n\n[dr]\nstate-dir = "%s/dr"\ncheckpoints = "%s/vault::plans"\n\n' "$w" "$w" "$w"
    printf '[[plan]]\nname = "%s"\nresources = [' "$tag"
    for ((i = 0; i < n; i++)); do printf '%s"%s-r%d"' "$([ $i = 0 ] || echo ', ')" "$tag" "$i"; done
    printf ']\ntemplate = "%s/plan.yaml"\ncinder-host = "aio@nfs#nfs"\ncinder-export-dir = "%s"\n\n' "$w" "$EXPORT"
    for ((i = 0; i < n; i++)); do
        printf '[plan.volume.%s-r%d]\nprimary-id = "%s"\n%s\n' "$tag" "$i" "$1" "$([ $i = 0 ] && echo 'bootable = true')"
        shift
    done
}

cli() { local node=$1; shift; "$drl" --config "$W/drl.toml" --node "$node" "$@"; }
all_in_sync() { # N
    local node i
    for node in a1 b1; do
        cli $node status --json | python3 -c "import json,sys
v=json.load(sys.stdin)['resources']
ok=len(v)==$1 and all(r['connection']=='Connected' and r['disk']=='UpToDate' and r['peer_disk']=='UpToDate' and r['out_of_sync_bytes']==0 for r in v)
sys.exit(0 if ok else 1)" || return 1
    done
}
all_connected() { cli a1 status --json | python3 -c "import json,sys; v=json.load(sys.stdin)['resources']; sys.exit(0 if len(v)==$1 and all(r['connection']=='Connected' for r in v) else 1)"; }
none_connected() { cli b1 status --json | python3 -c "import json,sys; v=json.load(sys.stdin)['resources']; sys.exit(0 if all(r['connection']!='Connected' for r in v) else 1)"; }
wait_for() { # WHAT TIMEOUT_S CMD...
    local what=$1 t=$2 i
    shift 2
    for ((i = 0; i < t * 5; i++)); do "$@" 2>/dev/null && return 0; sleep 0.2; done
    die "timed out waiting for $what"
}

echo "case,volumes,size_gib,data_mib,drl_rto_s,drl_own_s,startup_s,check_s,keystone_s,promote_s,handover_s,import_s,rewrite_s,stack_s,snap_rto_s,snap_create_s,snap_restore_s,snap_stack_s,speedup,stream_s,load1" >"$csv"
loads=()

run_case() { # KIND N SIZE_GIB
    local kind=$1 n=$2 s=$3 i ids=() tag a1 b1 t0 data_mib
    tag=drl-rb-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
    W=$(mktemp -d "/var/tmp/$tag.XXXX")
    on_exit "python3 '$py' cleanup '$tag' '$W' >/dev/null 2>&1 || true; [ -f '$W/b1.pid' ] && stop_pid \$(cat '$W/b1.pid') 10; [ -f '$W/a1.pid' ] && kill -9 \$(cat '$W/a1.pid') 2>/dev/null; rm -rf '$W'"
    for ((i = 0; i < n; i++)); do ids+=("$(uuid)"); done
    template "$n" "${ids[@]}" >"$W/plan.yaml"
    config "$W" "$tag" "$n" "$s" "${ids[@]}" >"$W/drl.toml"
    for node in a1 b1; do
        "$drl" daemon --config "$W/drl.toml" --node $node 2>>"$W/$node.log" &
        echo $! >"$W/$node.pid"
        wait_for_socket "$W/$node.sock" 30 "$(cat "$W/$node.pid")" || die "$node did not start: $(tail -3 "$W/$node.log")"
    done
    wait_for "both Connected" 60 all_connected "$n"
    for ((i = 0; i < n; i++)); do cli a1 primary "$tag-r$i" --force >/dev/null; done
    data_mib=$(python3 -c "print(int($s * 1024 * $FILL))")
    if [ "$data_mib" -gt 0 ]; then
        [ -f "/var/tmp/drl-rb-data-$data_mib" ] || head -c "${data_mib}M" /dev/urandom >"/var/tmp/drl-rb-data-$data_mib"
        for ((i = 0; i < n; i++)); do
            nbdcopy "/var/tmp/drl-rb-data-$data_mib" "nbd+unix:///?socket=$W/a1-$i.nbd"
        done
    fi
    wait_for "initial sync and the data replicated" 1800 all_in_sync "$n"
    # The snapshot policy's protection: a snapshot of each volume streamed to Swift.
    local ts=$(date +%s%3N)
    for ((i = 0; i < n; i++)); do
        cli a1 snapshot create "$tag-r$i" base >/dev/null
        cli a1 stream "$tag-r$i" base --to "swift://$tag/$tag-r$i" --json >/dev/null
    done
    local stream_s=$(python3 -c "print(($(date +%s%3N) - $ts) / 1000)")
    cli b1 dr protect "$tag" >/dev/null
    # The disaster: the primary site's daemon dies.
    kill -9 "$(cat "$W/a1.pid")"
    wait_for "the backup sees the link gone" 60 none_connected
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    loads+=("$load")
    log "case $kind: $n x ${s} GiB ($data_mib MiB data each), load $load: drl recovery"
    t0=$(date +%s%3N)
    cli b1 dr recover "$tag" --confirm-primary-down --json >"$W/drl-report.json"
    python3 "$py" drl-steps "$W/dr/$tag.journal" "$t0" >"$W/drl-steps.json"
    log "case $kind: snapshot policy recovery"
    cat >"$W/snap.json" <<EOF
{"tag": "$tag", "stack": "$tag-snap", "template": "$W/plan.yaml", "ids": $(printf '%s\n' "${ids[@]}" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split()))'),
 "resources": $(for ((i = 0; i < n; i++)); do echo "$tag-r$i"; done | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split()))'),
 "size_gib": $s, "restores": ${RESTORES:-4}, "swift_base": "swift://$tag", "snapshot": "base", "drl": "$drl", "config": "$W/drl.toml", "export": "$EXPORT"}
EOF
    python3 "$py" snap-recover "$W/snap.json" >"$W/snap-report.json"
    python3 - "$W" "$kind" "$n" "$s" "$data_mib" "$stream_s" "$load" >>"$csv" <<'PY'
import json, sys
w, kind, n, s, mib, stream, load = sys.argv[1:]
d = json.load(open(w + "/drl-steps.json"))
p = json.load(open(w + "/snap-report.json"))
f = lambda x: "%.2f" % x
print(",".join([kind + "-" + (s if kind == "size" else n), n, s, mib, f(d["rto_s"] + d["startup_s"]), f(d["drl_own_s"]),
                f(d["startup_s"]), f(d["check_s"]), f(d["keystone_s"]), f(d["promote_s"]), f(d["handover_s"]), f(d["import_s"]),
                f(d["rewrite_s"]), f(d["stack_s"]), f(p["total_s"]), f(p["create_s"]), f(p["restore_s"]),
                f(p["stack_s"]), f(p["total_s"] / (d["rto_s"] + d["startup_s"])), stream, load.split()[0]]))
PY
    tail -1 "$csv" >&2
    python3 "$py" cleanup "$tag" "$W" >&2 || warn "cleanup of $tag failed"
    stop_pid "$(cat "$W/b1.pid")" 10
    rm -rf "$W"
}

for s in $SIZES; do run_case size 1 "$s"; done
for n in $COUNTS; do
    [ "$n" = 1 ] && [[ " $SIZES " == *" 1 "* ]] && { grep '^size-1,' "$csv" | sed 's/^size-1,/count-1,/' >>"$csv"; continue; }
    run_case count "$n" 1
done
python3 "$py" report "$csv" "$md" "$png" "$(printf '%s; ' "${loads[@]}") (2 CPUs)"
rm -f /var/tmp/drl-rb-data-*
log "results: $md, $csv, $png"
cat "$md"
