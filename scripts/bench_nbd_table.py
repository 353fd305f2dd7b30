#!/usr/bin/env python3
"""Turn fio JSON results of scripts/bench-nbd.sh into a side-by-side table (drl vs qsd).

Usage: bench_nbd_table.py RAW_DIR META_JSON OUT_MD OUT_CSV

RAW_DIR holds one fio --output-format=json file per run, named ENGINE__ROW__REP.json
(ENGINE is drl or qsd). With several repeats, every number is the median over them.
META_JSON is a flat object of context (date, versions, runtime, ...) printed above the table.
The markdown table goes to stdout and OUT_MD; the CSV to OUT_CSV.
"""

import csv
import json
import os
import statistics
import sys

ROWS = [
    ("randwrite-4k-qd32", "4 KiB random write, QD 32"),
    ("randwrite-4k-qd1", "4 KiB random write, QD 1"),
    ("write-1m-qd16", "1 MiB sequential write, QD 16"),
]
ENGINES = ("drl", "qsd")


def metrics(path):
    """IOPS, MiB/s, p50 and p99 completion latency (us) of the single job in one fio run."""
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON document.
    data = json.loads(text[text.index("{"):])
    job = data["jobs"][0]
    if job.get("error"):
        raise SystemExit(f"{path}: fio reported error {job['error']}")
    w = job["write"]
    pct = w["clat_ns"].get("percentile", {})
    return {
        "iops": w["iops"],
        "mib_s": w["bw_bytes"] / 2**20,
        "p50_us": pct.get("50.000000", float("nan")) / 1000,
        "p99_us": pct.get("99.000000", float("nan")) / 1000,
    }


def collect(raw_dir):
    runs = {}  # (engine, row) -> list of metric dicts
    for name in sorted(os.listdir(raw_dir)):
        if not name.endswith(".json"):
            continue
        parts = name[: -len(".json")].split("__")
        if len(parts) != 3 or parts[0] not in ENGINES:
            continue
        runs.setdefault((parts[0], parts[1]), []).append(metrics(os.path.join(raw_dir, name)))
    med = {}
    for key, results in runs.items():
        med[key] = {m: statistics.median(r[m] for r in results) for m in results[0]}
        med[key]["n"] = len(results)
    return med


def fmt(value, digits=0):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def main():
    raw_dir, meta_path, out_md, out_csv = sys.argv[1:5]
    with open(meta_path) as f:
        meta = json.load(f)
    med = collect(raw_dir)
    if not med:
        raise SystemExit(f"no fio results in {raw_dir}")

    lines = ["# NBD write benchmark: drl vs qemu-storage-daemon", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "Latency is fio's completion latency (clat) percentiles. Ratio = drl IOPS / qsd IOPS;"
        " the goal is ratio >= 1.00 on every row. Numbers are medians over the repeats.",
        "",
        "| row | drl IOPS | qsd IOPS | ratio | drl MiB/s | qsd MiB/s "
        "| drl p50/p99 lat (us) | qsd p50/p99 lat (us) | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    csv_rows = []
    for row, label in ROWS:
        d, q = med.get(("drl", row)), med.get(("qsd", row))
        if d is None and q is None:
            continue
        ratio = d["iops"] / q["iops"] if d and q and q["iops"] > 0 else None
        goal = "-" if ratio is None else ("met" if ratio >= 1.0 else "MISSED")

        def lat(m):
            return "-" if m is None else f"{m['p50_us']:,.0f} / {m['p99_us']:,.0f}"

        lines.append(
            f"| {label} | {fmt(d and d['iops'])} | {fmt(q and q['iops'])} | {fmt(ratio, 2)} "
            f"| {fmt(d and d['mib_s'], 1)} | {fmt(q and q['mib_s'], 1)} | {lat(d)} | {lat(q)} | {goal} |"
        )
        csv_rows.append(
            {
                "row": row,
                "drl_iops": d and round(d["iops"], 1),
                "qsd_iops": q and round(q["iops"], 1),
                "ratio_iops": ratio and round(ratio, 4),
                "drl_mib_s": d and round(d["mib_s"], 2),
                "qsd_mib_s": q and round(q["mib_s"], 2),
                "drl_p50_us": d and round(d["p50_us"], 1),
                "drl_p99_us": d and round(d["p99_us"], 1),
                "qsd_p50_us": q and round(q["p50_us"], 1),
                "qsd_p99_us": q and round(q["p99_us"], 1),
                "repeats": max((m or {}).get("n", 0) for m in (d, q)),
            }
        )
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(out_md, "w") as f:
        f.write(text)
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0].keys()))
        writer.writeheader()
        for r in csv_rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})


if __name__ == "__main__":
    main()
