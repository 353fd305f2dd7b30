#!/usr/bin/env python3
"""Turn the results of scripts/bench-group.sh into a table: a consistency group of two volumes
against the same two volumes as two resources.

Usage: bench_group_table.py RAW_DIR META_JSON OUT_MD OUT_CSV

RAW_DIR holds, per setup (group, two) and repeat, SETUP__REP.json (fio, one job per volume),
SETUP__REP.cpu (CPU seconds of the Primary and the Secondary over fio's measured window, then
the clock tick rate: bench_cpu.py window), SETUP__REP.lag (lines "t_ms lag_ms send_queue_bytes
out_of_sync_bytes RES" from bench_repl.py sample) and SETUP__REP.drain (seconds until in sync
after fio stopped); VOLUME.cmp says whether each Secondary volume ended byte-identical.
Throughput, latency and CPU are medians over the repeats; the lag figures are over all samples.
"""

import json
import os
import statistics
import sys

from bench_nbd_table import fmt, metrics, write_outputs

SETUPS = [
    ("group", "group: one resource, 2 volumes"),
    ("two", "two resources, 1 volume each"),
]


def lag_per_sample(path):
    """The oldest unacked write's age per sample time over the setup's resources (ms), and the
    samples of each resource."""
    at, per_res = {}, {}
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) < 5:
                continue
            t, lag, res = int(p[0]), int(p[1]), p[4]
            at[t] = max(at.get(t, 0), lag)
            per_res.setdefault(res, []).append(lag)
    return list(at.values()), per_res


def collect(raw):
    runs, lags, per_res, drains = {}, {}, {}, {}
    for name in sorted(os.listdir(raw)):
        base, ext = os.path.splitext(name)
        parts = base.split("__")
        if len(parts) != 2:
            continue
        setup, path = parts[0], os.path.join(raw, name)
        if ext == ".json":
            vols = [metrics(path, j) for j in (0, 1)]
            ios = sum(v["ios"] for v in vols)
            with open(path[: -len(".json")] + ".cpu") as f:
                secs = [float(x) for x in f.read().split()[:-1]]
            runs.setdefault(setup, []).append({
                "iops0": vols[0]["iops"], "iops1": vols[1]["iops"],
                "iops": vols[0]["iops"] + vols[1]["iops"],
                "p50_0": vols[0]["p50_us"], "p50_1": vols[1]["p50_us"],
                "p99_0": vols[0]["p99_us"], "p99_1": vols[1]["p99_us"],
                "cpu_primary_us": secs[0] * 1e6 / max(ios, 1),
                "cpu_secondary_us": secs[1] * 1e6 / max(ios, 1),
            })
        elif ext == ".lag":
            oldest, by_res = lag_per_sample(path)
            lags.setdefault(setup, []).extend(oldest)
            for r, v in by_res.items():
                per_res.setdefault(setup, {}).setdefault(r, []).extend(v)
        elif ext == ".drain":
            with open(path) as f:
                drains.setdefault(setup, []).append(float(f.read().strip() or "nan"))
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} | {"n": len(rs)}
           for s, rs in runs.items()}
    return med, lags, per_res, drains


def main():
    raw, meta_path, out_md, out_csv = sys.argv[1:5]
    with open(meta_path) as f:
        meta = json.load(f)
    med, lags, per_res, drains = collect(raw)
    cmp = {}
    for name in sorted(os.listdir(raw)):
        if name.endswith(".cmp"):
            with open(os.path.join(raw, name)) as f:
                cmp[name[:-4]] = f.read().strip() or "?"
    lines = ["# Consistency group vs two resources: 4 KiB random writes, QD 32 per volume", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "The host is shared and loaded (2 CPUs, other builds and tests running; load averages"
        " above): absolute IOPS and even CPU per I/O move with what the rest of the host does"
        " (23 to 43 us for the same Primary here), so compare the two setups of one run,"
        " which alternate, with each other.",
        "",
        "| setup | IOPS vol 0 | IOPS vol 1 | IOPS total | p50 vol 0 / vol 1 (us) | p99 vol 0 / vol 1 (us)"
        " | lag max (ms) | lag p50 (ms) | catch-up max (s) | CPU/IO Primary (us) | CPU/IO Secondary (us) | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    csv_rows = []
    for s, label in SETUPS:
        m = med.get(s)
        if not m:
            continue
        lg = lags.get(s) or [0]
        dr = drains.get(s) or []
        lines.append(
            f"| {label} | {fmt(m['iops0'])} | {fmt(m['iops1'])} | {fmt(m['iops'])}"
            f" | {fmt(m['p50_0'])} / {fmt(m['p50_1'])} | {fmt(m['p99_0'])} / {fmt(m['p99_1'])}"
            f" | {max(lg):,} | {statistics.median(lg):,.0f} | {fmt(max(dr) if dr else None, 1)}"
            f" | {fmt(m['cpu_primary_us'], 1)} | {fmt(m['cpu_secondary_us'], 1)} | {m['n']} |"
        )
        csv_rows.append({
            "setup": s,
            **{k: round(v, 1) for k, v in m.items() if k != "n"},
            "lag_max_ms": max(lg), "lag_p50_ms": statistics.median(lg),
            "catchup_max_s": max(dr) if dr else "", "runs": m["n"],
        })
    if "group" in med and "two" in med:
        g, t = med["group"], med["two"]
        lines += [
            "",
            f"group / two resources: total IOPS {g['iops'] / t['iops']:.2f},"
            f" Primary CPU per I/O {g['cpu_primary_us'] / t['cpu_primary_us']:.2f},"
            f" Secondary CPU per I/O {g['cpu_secondary_us'] / t['cpu_secondary_us']:.2f}.",
        ]
    lines += [
        "",
        "Lag: `lag_ms` (age of the oldest write the Secondary has not acked) on the Primary every"
        " 200 ms; for the two resources per sample the older of the two (the backup site is as"
        " old as its oldest volume, and its two volumes are not from one moment at all). Per"
        " resource:",
        "",
        "| setup | resource | lag max (ms) | lag p50 (ms) | samples |",
        "|---|---|---:|---:|---:|",
    ]
    for s, label in SETUPS:
        for r, v in sorted((per_res.get(s) or {}).items()):
            lines.append(f"| {label} | {r} | {max(v):,} | {statistics.median(v):,.0f} | {len(v)} |")
    lines += ["", "Secondary byte-identical to the Primary after the runs (daemons stopped, cmp): "
              + ", ".join(f"{v}: **{c}**" for v, c in sorted(cmp.items())), ""]
    write_outputs(lines, csv_rows, out_md, out_csv)


if __name__ == "__main__":
    main()
