#!/usr/bin/python3
"""The cloud side of scripts/bench-recovery.sh: the snapshot policy's recovery, the breakdown
of drl's recovery from its journal, cleanup, and the table and plot.

  bench_recovery.py snap-recover CFG.json   # the paper's snapshot policy (see below); JSON out
  bench_recovery.py drl-steps JOURNAL T0_MS # drl's recovery split into its parts; JSON out
  bench_recovery.py cleanup TAG WORKDIR     # stacks, volumes, links and Swift objects of TAG
  bench_recovery.py report CSV MD PNG LOAD  # markdown table and PNG from the rows

The snapshot policy (the paper's Figure 11 peer): at the decision, create one new Cinder
volume per protected volume, restore the newest snapshot from Swift into it (`drl restore
swift://... --to FILE`, four restores at once), mark the first bootable, then create the same
stack from the same template with the new IDs. Polls every 250 ms, like drl's orchestrator.
Standard library only (Debian's python3); the plot needs python3-matplotlib.
"""
import csv
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

POLL_S = 0.25
KS = "http://127.0.0.1:5050/v3"
KS_PW = "drl-admin-pw"
SWIFT_AUTH = "http://127.0.0.1:8080/auth/v1.0"


def call(url, method="GET", body=None, token=None, headers=None):
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if token:
        req.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.headers, (json.loads(raw) if raw.strip() else {})
    except urllib.error.HTTPError as e:
        raise SystemExit("%s %s: HTTP %s: %s" % (method, url, e.code, e.read()[:400].decode(errors="replace")))


class Cloud:
    def __init__(self):
        h, body = call(KS + "/auth/tokens", "POST", {"auth": {"identity": {"methods": ["password"], "password": {
            "user": {"name": "admin", "domain": {"name": "Default"}, "password": KS_PW}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}})
        self.token = h["X-Subject-Token"]
        self.project = body["token"]["project"]["id"]

        def ep(types):
            for s in body["token"]["catalog"]:
                if s["type"] in types:
                    return [e["url"] for e in s["endpoints"] if e["interface"] == "public"][0]
            raise SystemExit("no %s endpoint in the catalog" % types)
        self.cinder = ep(("volumev3", "block-storage"))
        self.heat = ep(("orchestration",))

    def c(self, path, method="GET", body=None):
        return call(self.cinder + path, method, body, self.token, {"OpenStack-API-Version": "volume 3.16"})[1]

    def h(self, path, method="GET", body=None):
        return call(self.heat + path, method, body, self.token)[1]

    def volumes(self):
        return self.c("/volumes/detail?limit=1000")["volumes"]

    def find_stack(self, name):
        for s in self.h("/stacks?stack_name=%s" % name)["stacks"]:
            if s["stack_name"] == name:
                return s
        return None

    def wait_volume(self, vid, ok=("available",)):
        while True:
            v = self.c("/volumes/%s" % vid)["volume"]
            if v["status"] in ok:
                return v
            if v["status"].startswith("error"):
                raise SystemExit("volume %s went to %s" % (vid, v["status"]))
            time.sleep(POLL_S)

    def wait_stack(self, name, sid):
        while True:
            s = self.h("/stacks/%s/%s" % (name, sid))["stack"]
            if s["stack_status"] in ("CREATE_COMPLETE",):
                return s
            if s["stack_status"].endswith("_FAILED"):
                raise SystemExit("stack %s %s: %s" % (name, s["stack_status"], s.get("stack_status_reason")))
            time.sleep(POLL_S)

    def delete_stack(self, name):
        s = self.find_stack(name)
        if not s:
            return
        call("%s/stacks/%s/%s" % (self.heat, name, s["id"]), "DELETE", token=self.token)
        for _ in range(1200):
            s = self.find_stack(name)
            if not s or s["stack_status"] == "DELETE_COMPLETE":
                return
            time.sleep(POLL_S)


def now_ms():
    return int(time.time() * 1000)


def snap_recover(cfg):
    """cfg: tag, stack, template (file), ids (primary IDs), resources, size_gib, swift_base,
    snapshot, drl, config, export."""
    t = {"decision": now_ms()}
    cloud = Cloud()
    new = []
    for i, r in enumerate(cfg["resources"]):
        v = cloud.c("/volumes", "POST", {"volume": {
            "size": cfg["size_gib"], "name": "%s-snap-%s" % (cfg["tag"], r),
            "metadata": {"drl-bench": cfg["tag"], "drl-resource": r}}})["volume"]
        new.append(v["id"])
    for vid in new:
        cloud.wait_volume(vid)
    t["created"] = now_ms()
    # At most RESTORES at once (16 at once made Swift's tempauth refuse fresh tokens).
    running = []

    def reap(p):
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit("drl restore failed: %s" % err.decode(errors="replace")[-400:])
    for r, vid in zip(cfg["resources"], new):
        dst = os.path.join(cfg["export"], "volume-%s" % vid)
        if len(running) >= cfg.get("restores", 4):
            reap(running.pop(0))
        running.append(subprocess.Popen(
            [cfg["drl"], "--config", cfg["config"], "--node", "b1", "restore",
             "%s/%s/%s" % (cfg["swift_base"], r, cfg["snapshot"]), "--to", dst, "--json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in running:
        reap(p)
    t["restored"] = now_ms()
    cloud.c("/volumes/%s/action" % new[0], "POST", {"os-set_bootable": {"bootable": True}})
    text = open(cfg["template"]).read()
    for old, vid in zip(cfg["ids"], new):
        text = text.replace(old, vid)
    s = cloud.h("/stacks", "POST", {"stack_name": cfg["stack"], "template": text,
                                    "timeout_mins": 15})["stack"]
    cloud.wait_stack(cfg["stack"], s["id"])
    t["complete"] = now_ms()
    return {
        "create_s": (t["created"] - t["decision"]) / 1000,
        "restore_s": (t["restored"] - t["created"]) / 1000,
        "stack_s": (t["complete"] - t["restored"]) / 1000,
        "total_s": (t["complete"] - t["decision"]) / 1000,
        "volumes": new,
    }


def drl_steps(journal, t0_ms):
    """drl's recovery from its journal: drl's own parts (process start to the first record,
    check, promote, each handover, rewrite) and the cloud's (Cinder's imports, Heat's stack)."""
    recs = [json.loads(line) for line in open(journal) if line.strip()]
    rec = [r for r in recs if r["op"] == "recover"]

    def ts(step, phase):
        xs = [r["ts_ms"] for r in rec if r["step"] == step and r["phase"] == phase]
        return xs[-1] if xs else None

    def dur(step):
        return (ts(step, "done") - ts(step, "begin")) / 1000
    first = rec[0]["ts_ms"]
    check = [r for r in rec if r["step"] == "check" and r["phase"] == "done"]
    login = (check[-1].get("data") or {}).get("login_ms", 0) / 1000 if check else 0.0
    imports = sorted({r["step"].split(":", 1)[1] for r in rec if r["step"].startswith("import:")})
    handover = 0.0
    for r in imports:
        b, d = ts("import:" + r, "begin"), ts("handover:" + r, "done")
        if b is not None and d is not None:
            handover += (d - b) / 1000
    imp_begin = min(ts("import:" + r, "begin") for r in imports)
    imp_done = max(ts("import:" + r, "done") for r in imports)
    out = {
        "startup_s": (first - t0_ms) / 1000,
        "check_s": dur("check") - login,
        "keystone_s": login,
        "promote_s": dur("promote"),
        "handover_s": handover,
        "import_s": (imp_done - imp_begin) / 1000,
        "rewrite_s": dur("rewrite"),
        "stack_s": dur("stack"),
        "rto_s": (ts("stack", "done") - first) / 1000,
    }
    out["drl_own_s"] = round(out["startup_s"] + out["check_s"] + out["promote_s"] + handover
                             + out["rewrite_s"], 3)
    out["cinder_s"] = round(out["import_s"] - handover, 3)
    out["rto_s"] = round(out["rto_s"], 3)
    return out


def cleanup(tag, workdir, export="/var/tmp/drl-openstack/export"):
    cloud = Cloud()
    for s in cloud.h("/stacks")["stacks"]:
        if s["stack_name"].startswith(tag):
            cloud.delete_stack(s["stack_name"])
    for v in cloud.volumes():
        md = v.get("metadata") or {}
        if md.get("drl-plan", "").startswith(tag):
            # drl's imports: unmanage (the data is the replica's disk in WORKDIR).
            call("%s/volumes/%s/action" % (cloud.cinder, v["id"]), "POST", {"os-unmanage": None}, cloud.token)
        elif md.get("drl-bench") == tag:
            if v["status"] not in ("available", "error"):
                call("%s/volumes/%s/action" % (cloud.cinder, v["id"]), "POST",
                     {"os-reset_status": {"status": "available"}}, cloud.token)
            call("%s/volumes/%s" % (cloud.cinder, v["id"]), "DELETE", token=cloud.token)
    # Links into WORKDIR (drl-RES, and volume-<id> that Cinder renamed and left at unmanage).
    for _ in range(240):
        left = [v for v in cloud.volumes() if (v.get("metadata") or {}).get("drl-bench") == tag
                or (v.get("metadata") or {}).get("drl-plan", "").startswith(tag)]
        if not left:
            break
        time.sleep(POLL_S)
    for e in os.scandir(export):
        try:
            if os.readlink(e.path).startswith(workdir):
                os.remove(e.path)
        except OSError:
            pass
    # Swift (tempauth): every object of the container TAG, then the container.
    h, _ = call(SWIFT_AUTH, headers={"X-Auth-User": "test:tester", "X-Auth-Key": "testing"})
    surl, stok = h["X-Storage-Url"], h["X-Auth-Token"]
    while True:
        try:
            _, objs = call("%s/%s?format=json" % (surl, tag), token=stok)
        except SystemExit:
            return
        if not objs:
            break
        for o in objs:
            try:
                call("%s/%s/%s" % (surl, tag, urllib.request.quote(o["name"])), "DELETE", token=stok)
            except SystemExit:
                pass
    try:
        call("%s/%s" % (surl, tag), "DELETE", token=stok)
    except SystemExit:
        pass


def report(csv_path, md_path, png_path, load):
    rows = list(csv.DictReader(open(csv_path)))
    cols = ["case", "volumes", "size_gib", "data_mib", "drl_rto_s", "drl_own_s", "startup_s",
            "check_s", "keystone_s", "promote_s", "handover_s", "import_s", "rewrite_s", "stack_s",
            "snap_rto_s", "snap_create_s", "snap_restore_s", "snap_stack_s", "speedup"]
    with open(md_path, "w") as f:
        f.write("# Recovery time: drl (replicated volumes) against the snapshot policy (Swift)\n\n")
        f.write("Decision -> CREATE_COMPLETE of the same stack (a server booted from the first "
                "volume, the others attached). drl: `drl dr recover` (promote, Cinder "
                "manage-existing, template rewrite, Heat). Snapshot policy: new Cinder volumes, "
                "`drl restore` of the newest snapshot from Swift into each, the same stack. "
                "`data_mib`: random data per volume (the rest sparse). drl_own = process start + "
                "check (daemons' status and detection; Keystone's token apart: keystone_s) + promote + handover "
                "+ rewrite; import_s - handover_s is Cinder's manage-existing, stack_s is Heat's.\n\n")
        f.write("Machine load (1, 5, 15 min) during the run: %s\n\n" % load)
        f.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
        for r in rows:
            f.write("| " + " | ".join(r.get(c, "") for c in cols) + " |\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    groups = [("size", "volume size (GiB), one volume", "size_gib"),
              ("count", "volumes per plan (1 GiB each)", "volumes")]
    for ax, (kind, label, key) in zip(axes, groups):
        sel = [r for r in rows if r["case"].startswith(kind)]
        if not sel:
            ax.set_visible(False)
            continue
        xs = list(range(len(sel)))
        w = 0.38
        own = [float(r["drl_own_s"]) for r in sel]
        cinder = [float(r["import_s"]) - float(r["handover_s"]) + float(r["keystone_s"]) for r in sel]
        heat = [float(r["stack_s"]) for r in sel]
        b0 = own
        b1 = [a + b for a, b in zip(own, cinder)]
        ax.bar([x - w / 2 for x in xs], own, w, color="#2b6cb0", label="drl's own steps")
        ax.bar([x - w / 2 for x in xs], cinder, w, bottom=b0, color="#90cdf4", label="Keystone token + Cinder import")
        ax.bar([x - w / 2 for x in xs], heat, w, bottom=b1, color="#c6f6d5", label="Heat stack")
        sc = [float(r["snap_create_s"]) for r in sel]
        sr = [float(r["snap_restore_s"]) for r in sel]
        ss = [float(r["snap_stack_s"]) for r in sel]
        ax.bar([x + w / 2 for x in xs], sc, w, color="#fbd38d", label="snapshot: create volumes")
        ax.bar([x + w / 2 for x in xs], sr, w, bottom=sc, color="#f6ad55", label="snapshot: restore from Swift")
        ax.bar([x + w / 2 for x in xs], ss, w, bottom=[a + b for a, b in zip(sc, sr)], color="#dd6b20",
               label="snapshot: Heat stack")
        ax.set_xticks(xs, [r[key] for r in sel])
        ax.set_xlabel(label)
        ax.set_ylabel("seconds, decision -> CREATE_COMPLETE")
        for x, r in zip(xs, sel):
            ax.annotate("%.1f" % float(r["drl_rto_s"]), (x - w / 2, float(r["drl_rto_s"])), ha="center",
                        xytext=(0, 2), textcoords="offset points", fontsize=8)
            ax.annotate("%.1f" % float(r["snap_rto_s"]), (x + w / 2, float(r["snap_rto_s"])), ha="center",
                        xytext=(0, 2), textcoords="offset points", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("drl recovery (left bars) vs snapshot policy (right bars): the paper's Figure 11")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


def main(argv):
    cmd = argv[1]
    if cmd == "snap-recover":
        print(json.dumps(snap_recover(json.load(open(argv[2])))))
    elif cmd == "drl-steps":
        print(json.dumps(drl_steps(argv[2], int(argv[3]))))
    elif cmd == "cleanup":
        cleanup(argv[2], argv[3])
    elif cmd == "report":
        report(argv[2], argv[3], argv[4], argv[5])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
