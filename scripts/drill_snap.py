#!/usr/bin/python3
"""The drill's snapshot policy, from the plan's protection actions (`drl dr plan show PLAN --json`
at B: the snapshots A streamed to Swift and the image copies, as A recorded them).

    drill_snap.py pick SHOW.json KILL_UNIX_MS RES...   per resource, in order, the newest
                                                      snapshot site-a finished streaming before
                                                      the kill: "RES STORE_URL/SNAP SNAP_UNIX_MS
                                                      BYTES SECONDS"; exit 1 naming a resource
                                                      that has none
    drill_snap.py ready SHOW.json RES...               exit 0 once site-a streamed a snapshot of
                                                      every RES and copied an image
    drill_snap.py timeline SHOW.json KILL_UNIX_MS      every action site-a finished before the
                                                      kill: "UNIX_MS|EVENT|DETAIL" lines

A snapshot's name is PLAN-<unix ms> (when the daemon took it); an action's done_unix_ms is when
its stream (or copy) was complete in Swift. Standard library only.
"""
import json
import sys


def actions(path, kill):
    v = json.load(open(path))
    if "actions_error" in v:
        sys.exit(f"drill_snap: the plan's actions: {v['actions_error']}")
    return [a for a in v.get("actions") or []
            if a.get("node") == "site-a" and int(a.get("done_unix_ms") or 0) <= kill]


def taken_ms(a):
    return int(a["snapshot"].rsplit("-", 1)[1])


def pick(path, kill, resources):
    snaps = [a for a in actions(path, kill) if a.get("kind") == "snapshot"]
    for r in resources:
        mine = [a for a in snaps if a.get("resource") == r]
        if not mine:
            sys.exit(f"drill_snap: no snapshot of {r} was in Swift before the kill")
        a = max(mine, key=taken_ms)
        print(r, f"{a['stored_at']}/{a['snapshot']}", taken_ms(a), a.get("bytes_uploaded", 0),
              f"{float(a.get('seconds') or 0):.3f}")


def timeline(path, kill):
    for a in sorted(actions(path, kill), key=lambda a: int(a["done_unix_ms"])):
        if a.get("kind") == "snapshot":
            print(f"{a['done_unix_ms']}|snapshot-streamed|{a['resource']} {a['snapshot']} in Swift:"
                  f" {a.get('bytes_uploaded', 0)} bytes uploaded in {float(a.get('seconds') or 0):.2f} s"
                  f" (parent {a.get('parent') or 'none: full'})")
        elif a.get("kind") == "image":
            print(f"{a['done_unix_ms']}|image-copied|{a.get('file')} ({a.get('size_bytes')} bytes) to"
                  f" {a.get('stored_at')}: {a.get('bytes_uploaded', 0)} bytes uploaded in"
                  f" {float(a.get('seconds') or 0):.2f} s")


def ready(path, resources):
    done = actions(path, 2**63)
    have = {a.get("resource") for a in done if a.get("kind") == "snapshot"}
    image = any(a.get("kind") == "image" for a in done)
    return 0 if image and all(r in have for r in resources) else 1


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) >= 4 and a[0] == "pick":
        pick(a[1], int(a[2]), a[3:])
    elif len(a) >= 3 and a[0] == "ready":
        sys.exit(ready(a[1], a[2:]))
    elif len(a) == 3 and a[0] == "timeline":
        timeline(a[1], int(a[2]))
    else:
        sys.exit(__doc__)
