#!/usr/bin/python3
"""Keystone admin steps of openstack-aio.sh, idempotent, with the standard library only.

  ks_admin.py register URL PASSWORD TYPE NAME ENDPOINT [TYPE NAME ENDPOINT ...]
      each service and its public, internal and admin endpoints (missing ones only)
  ks_admin.py service-role URL PASSWORD
      role "service" for admin on project admin (Cinder refuses Nova's attachment deletes
      without a service token of a user holding it: OSSA-2023-003, ConflictNovaUsingAttachment)
"""
import json
import sys
import urllib.request


def call(url, method, path, body=None, token=None):
    req = urllib.request.Request(url + path, method=method,
                                 data=json.dumps(body).encode() if body else None)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("X-Auth-Token", token)
    with urllib.request.urlopen(req) as r:
        return r.headers, json.loads(r.read() or b"{}")


def login(url, pw):
    """The admin's project-scoped token and the token body."""
    h, body = call(url, "POST", "/auth/tokens", {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": pw}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}})
    return h["X-Subject-Token"], body


def register(url, tok, args):
    for stype, name, endpoint in (args[i:i + 3] for i in range(0, len(args), 3)):
        _, svcs = call(url, "GET", "/services?type=" + stype, token=tok)
        sid = svcs["services"][0]["id"] if svcs["services"] else \
            call(url, "POST", "/services", {"service": {"type": stype, "name": name}}, tok)[1]["service"]["id"]
        _, eps = call(url, "GET", "/endpoints?service_id=" + sid, token=tok)
        have = {e["interface"] for e in eps["endpoints"]}
        for i in ("public", "internal", "admin"):
            if i not in have:
                call(url, "POST", "/endpoints", {"endpoint": {"service_id": sid, "interface": i,
                     "region_id": "RegionOne", "url": endpoint}}, tok)


def service_role(url, tok, body):
    uid, pid = body["token"]["user"]["id"], body["token"]["project"]["id"]
    _, roles = call(url, "GET", "/roles?name=service", token=tok)
    rid = roles["roles"][0]["id"] if roles["roles"] else \
        call(url, "POST", "/roles", {"role": {"name": "service"}}, tok)[1]["role"]["id"]
    call(url, "PUT", "/projects/%s/users/%s/roles/%s" % (pid, uid, rid), token=tok)


def main(argv):
    cmd, url, pw, rest = argv[1], argv[2], argv[3], argv[4:]
    tok, body = login(url, pw)
    if cmd == "register":
        register(url, tok, rest)
    elif cmd == "service-role":
        service_role(url, tok, body)
    else:
        sys.exit("ks_admin.py: unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
