#!/usr/bin/python3
"""bench-drill.sh's table (results.md, results.csv) and plot (results.png) from the runs' summary.json
files in OUT:  bench_drill_report.py OUT. The plot needs Debian's python3-matplotlib."""
import glob, json, os, re, sys
out = sys.argv[1]


def order(path):
    """Rates fastest first, then sizes smallest first, then the run (dirs RATE-SIZE-RUN)."""
    n = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", os.path.basename(os.path.dirname(path)))]
    return (-n[0], *n[1:]) if n else (0,)


rows = []
for s in sorted(glob.glob(os.path.join(out, "*", "summary.json")), key=order):
    d = os.path.dirname(s)
    j = json.load(open(s))
    l = json.load(open(os.path.join(d, "load.json"))) if os.path.exists(os.path.join(d, "load.json")) else {}
    st = j["steps_ms"]
    sp = j.get("snapshot_policy") or {}
    rows.append([j["rate"], j["volume_size"], j["volumes"], j["writes_acked"], j["lost_writes"],
                 f'{j["rpo_seconds"]:.3f}', j["lag_at_kill_ms"], st["suspicion"], st["decision"],
                 st["promote"], j["kill_to_first_read_ms"], st["check"], st["import"], st["rewrite"],
                 st["stack"], j["kill_to_stack_complete_ms"], j["failback_resync_bytes"],
                 l.get("load_before", ""), l.get("load_after", ""),
                 sp.get("snapshot_every", ""), sp.get("snapshot_age_ms", ""), sp.get("lost_writes", ""),
                 f'{sp["rpo_seconds"]:.3f}' if sp else "", sp.get("restore_ms", ""),
                 sp.get("kill_to_restored_ms", ""), sp.get("kill_to_stack_estimate_ms", ""),
                 j.get("fill", 0), len(set((j.get("backup_nodes") or {"": ""}).values())),
                 {"a": "site A", "b": "site B", "w": "witness"}.get(j.get("etcd_leader_at_kill"), "")])
head = ["rate", "size", "volumes", "acked writes", "lost writes", "RPO s", "lag at kill ms",
        "suspicion ms", "decision ms", "promote ms", "kill->first read ms", "check ms", "import ms",
        "rewrite ms", "stack ms", "kill->CREATE_COMPLETE ms", "fail back resync bytes",
        "load before", "load after", "snapshot every", "snapshot age at kill ms",
        "snapshot lost writes", "snapshot RPO s", "snapshot restore ms", "snapshot kill->restored ms",
        "snapshot kill->CREATE_COMPLETE ms (estimate)", "fill", "backup nodes", "etcd leader at kill"]
with open(os.path.join(out, "results.csv"), "w") as f:
    f.write(",".join(head) + "\n")
    for r in rows:
        f.write(",".join(str(x) for x in r) + "\n")
with open(os.path.join(out, "results.md"), "w") as f:
    f.write("# drl disaster drill: RPO and RTO by link rate and volume size, replication and the snapshot policy\n\n")
    f.write("The snapshot policy is the same kill recovered from the newest snapshot A had streamed to Swift\n"
            "(restored at B with `drl restore`, all volumes at once), timed from the kill: the same decision\n"
            "(A suspected, its leases expired), then the restore. Its CREATE_COMPLETE estimate adds the run's\n"
            "own import + rewrite + stack steps (the same for both policies; no second stack is created).\n\n")
    if rows:
        def span(col):
            v = [float(r[col]) for r in rows if r[col] not in ("", None)]
            return f"{min(v) / 1000:.2f}-{max(v) / 1000:.2f} s" if v else "-"
        f.write(f"Against the paper (265 km testbed, its Figures 7-11: about 0.5 s to detect, about 30 s to\n"
                f"recover with replication, minutes with snapshots): suspicion {span(7)}, kill -> first\n"
                f"writable read at B {span(10)}, kill -> CREATE_COMPLETE {span(15)} over {len(rows)} runs;\n"
                f"the snapshot policy's data restored {span(24)} after the kill.\n\n")
    # With repeats: the median of each cell (rate, size) over its runs, the figures a person
    # compares; every run follows below.
    cells = {}
    for r in rows:
        cells.setdefault((r[0], r[1]), []).append(r)
    if any(len(v) > 1 for v in cells.values()):
        def med(rs, col):
            v = sorted(float(r[col]) for r in rs if r[col] not in ("", None))
            if not v:
                return "-"
            m = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
            return f"{m:.3f}" if col in (5, 22) else f"{m:.0f}"
        mcols = [("lost writes", 4), ("RPO s", 5), ("lag at kill ms", 6), ("suspicion ms", 7),
                 ("decision ms", 8), ("kill->first read ms", 10), ("stack ms", 14),
                 ("kill->CREATE_COMPLETE ms", 15), ("snapshot age at kill ms", 20),
                 ("snapshot lost writes", 21), ("snapshot RPO s", 22), ("snapshot restore ms", 23),
                 ("snapshot kill->restored ms", 24)]
        f.write("Medians per cell over its runs:\n\n")
        f.write("| rate | size | runs | " + " | ".join(n for n, _ in mcols) + " |\n|"
                + "---|" * (3 + len(mcols)) + "\n")
        for (rate, size), rs in cells.items():
            f.write(f"| {rate} | {size} | {len(rs)} | "
                    + " | ".join(med(rs, c) for _, c in mcols) + " |\n")
        f.write("\nEvery run:\n\n")
    f.write("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
    for r in rows:
        f.write("| " + " | ".join(str(x) for x in r) + " |\n")
print(open(os.path.join(out, "results.md")).read())
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
steps = [("suspicion", 7), ("decision", 8), ("promote", 9), ("check", 11), ("import", 12),
         ("rewrite", 13), ("stack", 14)]
fig, ax = plt.subplots(figsize=(10, 4.5))
labels = [f"{r[0]}\n{r[1]}" for r in rows]
left = [0.0] * len(rows)
for name, col in steps:
    w = [float(r[col] or 0) / 1000 for r in rows]
    ax.barh(range(len(rows)), w, left=left, label=name)
    left = [a + b for a, b in zip(left, w)]
# What the steps do not cover (waits between them) up to CREATE_COMPLETE.
w = [max(float(r[15] or 0) / 1000 - l, 0) for r, l in zip(rows, left)]
ax.barh(range(len(rows)), w, left=left, label="between steps", color="#dddddd")
ax.set_yticks(range(len(rows)), labels, fontsize=8)
ax.invert_yaxis()
# The snapshot policy's data RTO (decision + restore from Swift), a marker per row.
sx = [(i, float(r[24]) / 1000) for i, r in enumerate(rows) if r[24] not in ("", None)]
if sx:
    ax.plot([x for _, x in sx], [i for i, _ in sx], "kD", ms=5, label="snapshot policy: data restored")
ax.set_xlabel("seconds from the kill to CREATE_COMPLETE, by step")
ax.set_title("drl disaster drill: RTO by step (replication) and the snapshot policy's restore")
ax.legend(fontsize=8, ncol=4)
fig.tight_layout()
fig.savefig(os.path.join(out, "results.png"), dpi=110)
