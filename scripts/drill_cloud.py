#!/usr/bin/python3
"""The drill's look at the backup site's cloud (scripts/openstack-aio.sh), from the host.

    drill_cloud.py verify PLAN NVOL OUT.json FIRST
                                               the recovered stack and the imported volumes:
                                               CREATE_COMPLETE, the server booted from the
                                               imported ID of volume FIRST (RES, or RES/N in a
                                               consistency group), every volume in-use on that
                                               server; writes what it saw, the volumes in
                                               (resource, volume number) order; exit 1 if not
    drill_cloud.py cleanup PLAN DIR            delete the stack PLAN, unmanage every volume
                                               imported for PLAN (metadata drl-plan), remove
                                               the links in the export that point into DIR
    drill_cloud.py swift-cleanup PREFIX        delete every Swift container whose name starts
                                               with PREFIX, objects first (scripts/swift-aio.sh,
                                               tempauth test:tester on 127.0.0.1:8080)

What drl did is judged here with Cinder's and Heat's own APIs, apart from drl's report.
Credentials: the all-in-one's admin (OS_* override). Standard library only.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

KS = os.environ.get("OS_AUTH_URL", "http://127.0.0.1:5050/v3").rstrip("/")
EXPORT = "/var/tmp/drl-openstack/export"
SWIFT_AUTH = "http://127.0.0.1:8080/auth/v1.0"


def call(method, url, token=None, body=None, ok=(200, 201, 202, 204)):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/json")
    if token:
        req.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None), r.headers
    except urllib.error.HTTPError as e:
        if e.code in ok:
            return e.code, None, e.headers
        raise SystemExit(f"{method} {url}: HTTP {e.code}: {e.read()[:300]!r}")


def login():
    dom = {"name": "Default"}
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": os.environ.get("OS_USERNAME", "admin"), "domain": dom,
        "password": os.environ.get("OS_PASSWORD", "drl-admin-pw")}}},
        "scope": {"project": {"name": os.environ.get("OS_PROJECT_NAME", "admin"), "domain": dom}}}}
    _, tok, h = call("POST", KS + "/auth/tokens", body=body)
    ep = {}
    for s in tok["token"]["catalog"]:
        for e in s["endpoints"]:
            if e["interface"] == "public":
                ep[s["type"]] = e["url"].rstrip("/")
    return h["X-Subject-Token"], ep


def find_stack(token, heat, name):
    _, r, _ = call("GET", f"{heat}/stacks?name={name}", token)
    st = [s for s in r["stacks"] if s["stack_name"] == name]
    if not st:
        return None
    _, r, _ = call("GET", f"{heat}/stacks/{name}/{st[0]['id']}", token)
    return r["stack"]


def plan_volumes(token, cinder, plan):
    _, r, _ = call("GET", f"{cinder}/volumes/detail?all_tenants=1", token)
    return [v for v in r["volumes"] if (v.get("metadata") or {}).get("drl-plan") == plan]


def volume_key(v):
    """The plan's name of an imported volume: RES, or RES/N for volume N of a group."""
    md = v.get("metadata") or {}
    n = md.get("drl-volume")
    return md.get("drl-resource", "") + ("" if n is None else f"/{n}")


def verify(plan, nvol, out, first):
    token, ep = login()
    heat, cinder = ep["orchestration"], ep["volumev3"]
    stack = find_stack(token, heat, plan)
    seen = {"plan": plan, "stack_id": None, "stack_status": None, "volumes": [], "problems": []}
    bad = seen["problems"].append
    if stack is None:
        bad(f"no stack named {plan}")
    else:
        seen["stack_id"], seen["stack_status"] = stack["id"], stack["stack_status"]
        seen["boot_volume"] = (stack.get("parameters") or {}).get("boot_volume")
        if stack["stack_status"] != "CREATE_COMPLETE":
            bad(f"stack {stack['stack_status']}: {stack.get('stack_status_reason')}")
        _, r, _ = call("GET", f"{heat}/stacks/{plan}/{stack['id']}/resources/server", token)
        seen["server_id"] = r["resource"]["physical_resource_id"]
    vols = plan_volumes(token, cinder, plan)
    order = lambda v: (v["metadata"].get("drl-resource", ""), int(v["metadata"].get("drl-volume") or 0))
    for v in sorted(vols, key=order):
        seen["volumes"].append({
            "resource": v["metadata"].get("drl-resource"), "key": volume_key(v), "cinder_id": v["id"],
            "status": v["status"], "bootable": v.get("bootable") == "true",
            "attached_to": [a.get("server_id") for a in v.get("attachments") or []],
        })
    if len(vols) != nvol:
        bad(f"{len(vols)} volumes imported for {plan}, expected {nvol}")
    for v in seen["volumes"]:
        if v["status"] != "in-use" or v["attached_to"] != [seen.get("server_id")]:
            bad(f"volume {v['cinder_id']} ({v['resource']}) {v['status']}, attached to {v['attached_to']}, not to the stack's server")
        if v["key"] == first:
            if seen.get("boot_volume") != v["cinder_id"]:
                bad(f"the stack's boot_volume {seen.get('boot_volume')} is not {first}'s imported {v['cinder_id']}")
            if not v["bootable"]:
                bad(f"{first}'s imported volume is not bootable")
    json.dump(seen, open(out, "w"), indent=1)
    for p in seen["problems"]:
        print("drill_cloud: " + p, file=sys.stderr)
    return 1 if seen["problems"] else 0


def cleanup(plan, d):
    token, ep = login()
    heat, cinder = ep["orchestration"], ep["volumev3"]
    stack = find_stack(token, heat, plan)
    if stack is not None:
        call("DELETE", f"{heat}/stacks/{plan}/{stack['id']}", token)
        end = time.time() + 120
        while time.time() < end:
            s = find_stack(token, heat, plan)
            if s is None or s["stack_status"] in ("DELETE_COMPLETE", "DELETE_FAILED"):
                break
            time.sleep(0.5)
    for v in plan_volumes(token, cinder, plan):
        call("POST", f"{cinder}/volumes/{v['id']}/action", token, {"os-unmanage": None})
        print(f"drill_cloud: unmanaged {v['id']} ({v['metadata'].get('drl-resource')})", file=sys.stderr)
    d = os.path.realpath(d)
    for name in os.listdir(EXPORT) if os.path.isdir(EXPORT) else []:
        p = os.path.join(EXPORT, name)
        if os.path.islink(p) and os.path.realpath(p).startswith(d + "/"):
            os.unlink(p)
    return 0


def swift_cleanup(prefix):
    if len(prefix) < 8:
        raise SystemExit(f"swift-cleanup: prefix {prefix!r} too short to be one drill's")
    req = urllib.request.Request(SWIFT_AUTH, headers={"X-Auth-User": "test:tester", "X-Auth-Key": "testing"})
    with urllib.request.urlopen(req, timeout=30) as r:
        token, url = r.headers["X-Auth-Token"], r.headers["X-Storage-Url"]
    q = urllib.parse.quote

    def names(path):
        out, marker = [], ""
        while True:
            _, page, _ = call("GET", f"{url}{path}format=json&limit=10000&marker={q(marker)}", token)
            if not page:
                return out
            out += [p["name"] for p in page]
            marker = page[-1]["name"]

    for c in names(f"?prefix={q(prefix)}&"):
        for o in names(f"/{q(c)}?"):
            call("DELETE", f"{url}/{q(c)}/{q(o)}", token, ok=(200, 204, 404))
        call("DELETE", f"{url}/{q(c)}", token, ok=(204, 404, 409))
        print(f"drill_cloud: deleted Swift container {c}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) == 5 and a[0] == "verify":
        sys.exit(verify(a[1], int(a[2]), a[3], a[4]))
    if len(a) == 3 and a[0] == "cleanup":
        sys.exit(cleanup(a[1], a[2]))
    if len(a) == 2 and a[0] == "swift-cleanup":
        sys.exit(swift_cleanup(a[1]))
    sys.exit(__doc__)
