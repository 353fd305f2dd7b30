#!/usr/bin/env python3
"""Turn the results of scripts/bench-nbd.sh into side-by-side tables.

Usage: bench_nbd_table.py RAW_DIR META_JSON OUT_MD OUT_CSV

RAW_DIR holds one fio --output-format=json file per run, named ENGINE__ROW__REP.json, where
ENGINE is drl (unreplicated), drlrep (replicating; the Secondary's file on the same disk),
drlshm (replicating; the Secondary's file on tmpfs), drlloop (replicating; the Secondary on a loop
block device), qsd, or the transport ceiling: drlnull (drl's
NBD server over its null volume) and qsdnull (qsd over null-co). A replicated run also has
ENGINE__ROW__REP.lag (lines "t_ms lag_ms send_queue_bytes out_of_sync_bytes", sampled on the
Primary during the run) and ENGINE__ROW__REP.drain (seconds until the Secondary caught up after
fio stopped); ENGINE.cmp says whether the Secondary ended byte-identical ("identical", or
cmp's output). With several repeats, every throughput number is the median over them; the lag
figures are over all samples of all repeats. With --cpu, ENGINE__ROW__REP.cpu holds the CPU
seconds of the daemon(s) over fio's measured window ("S [S2] HZ": a replicated column's Primary,
then its Secondary); CPU per I/O is that over fio's I/Os, medians over the repeats.
META_JSON is a flat object of context (date, versions, runtime, ...) printed above the tables.
The markdown goes to stdout and OUT_MD; the CSV (one line per row) to OUT_CSV.
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
ENGINES = ("drl", "drlrep", "drlshm", "drlloop", "qsd", "drlnull", "qsdnull")
LABEL = {
    "drl": "drl",
    "drlrep": "drl repl",
    "drlshm": "drl repl (Secondary on tmpfs)",
    "drlloop": "drl repl (Secondary on a loop device)",
    "qsd": "qsd",
    "drlnull": "drl null",
    "qsdnull": "qsd null-co",
}
REPLICATED = ("drlrep", "drlshm", "drlloop")
# perf stat events of --counts, summed into these columns (per I/O).
COUNT_KEY = {
    "raw_syscalls:sys_enter": "syscalls",
    "context-switches": "switches",
    "page-faults": "faults",
    "syscalls:sys_enter_io_uring_enter": "uring",
    "syscalls:sys_enter_futex": "futex",
    "syscalls:sys_enter_epoll_wait": "epoll",
    "syscalls:sys_enter_read": "recv",
    "syscalls:sys_enter_readv": "recv",
    "syscalls:sys_enter_recvfrom": "recv",
    "syscalls:sys_enter_recvmsg": "recv",
    "syscalls:sys_enter_write": "send",
    "syscalls:sys_enter_writev": "send",
    "syscalls:sys_enter_sendto": "send",
    "syscalls:sys_enter_sendmsg": "send",
}
COUNT_COLS = [("syscalls", "system calls"), ("uring", "io_uring_enter"), ("recv", "reads (socket/file)"),
              ("send", "writes (socket/file)"), ("epoll", "epoll_wait"), ("futex", "futex"),
              ("switches", "context switches"), ("faults", "page faults")]


def metrics(path, job=0):
    """IOPS, MiB/s, p50 and p99 completion latency (us) of job `job` (the single job unless
    told) in one fio run; with ENGINE__ROW__REP.cpu beside it, the CPU per I/O of that job."""
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON document.
    data = json.loads(text[text.index("{"):])
    job = data["jobs"][job]
    if job.get("error"):
        raise SystemExit(f"{path}: fio reported error {job['error']}")
    w = job["write"]
    pct = w["clat_ns"].get("percentile", {})
    ios = max(w["total_ios"], 1)
    cpu = {}
    cpu_path = path[: -len(".json")] + ".cpu"
    if os.path.exists(cpu_path):
        with open(cpu_path) as f:
            secs = [float(x) for x in f.read().split()[:-1]]
        cpu = {f"cpu{i}_us": s * 1e6 / ios for i, s in enumerate(secs)}
    # With --counts, ENGINE__ROW__REP.countN: perf stat -x, of daemon N (0: the daemon or the
    # Primary, 1: the Secondary) over fio's measured window; per I/O like the CPU.
    counts = {}
    for i in (0, 1):
        cpath = path[: -len(".json")] + f".count{i}"
        if not os.path.exists(cpath):
            continue
        with open(cpath) as f:
            for line in f:
                fields = line.strip().split(",")
                if len(fields) < 3 or not fields[0] or line.startswith("#"):
                    continue
                try:
                    value = float(fields[0])
                except ValueError:
                    continue  # "<not counted>"
                key = f"n{i}_{COUNT_KEY.get(fields[2], fields[2])}"
                counts[key] = counts.get(key, 0.0) + value / ios
    return {
        **cpu,
        **counts,
        "iops": w["iops"],
        "ios": w["total_ios"],
        "mib_s": w["bw_bytes"] / 2**20,
        "p50_us": pct.get("50.000000", float("nan")) / 1000,
        "p99_us": pct.get("99.000000", float("nan")) / 1000,
    }


def lag_samples(path):
    lags, queues = [], []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                lags.append(int(parts[1]))
                queues.append(int(parts[2]))
    return lags, queues


def collect(raw_dir):
    runs = {}  # (engine, row) -> list of metric dicts
    lag = {}  # (engine, row) -> {"lag": [...], "queue": [...], "drain": [...]}
    cmp = {}
    for name in sorted(os.listdir(raw_dir)):
        path = os.path.join(raw_dir, name)
        base, ext = os.path.splitext(name)
        if ext == ".cmp" and base in ENGINES:
            with open(path) as f:
                cmp[base] = f.read().strip() or "?"
            continue
        parts = base.split("__")
        if len(parts) != 3 or parts[0] not in ENGINES:
            continue
        key = (parts[0], parts[1])
        if ext == ".json":
            runs.setdefault(key, []).append(metrics(path))
        elif ext == ".lag":
            lags, queues = lag_samples(path)
            d = lag.setdefault(key, {"lag": [], "queue": [], "drain": []})
            d["lag"] += lags
            d["queue"] += queues
        elif ext == ".drain":
            with open(path) as f:
                lag.setdefault(key, {"lag": [], "queue": [], "drain": []})["drain"].append(
                    float(f.read().strip() or "nan")
                )
    med = {}
    for key, results in runs.items():
        med[key] = {
            m: statistics.median(r[m] for r in results if m in r)
            for m in results[0]
        }
        med[key]["n"] = len(results)
    return med, lag, cmp


def fmt(value, digits=0):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a, b, key):
    if a is None or b is None or not b[key]:
        return None
    return a[key] / b[key]


def main():
    raw_dir, meta_path, out_md, out_csv = sys.argv[1:5]
    with open(meta_path) as f:
        meta = json.load(f)
    med, lag, cmp = collect(raw_dir)
    if not med:
        raise SystemExit(f"no fio results in {raw_dir}")
    # Only the rows that ran (bench-nbd.sh's ROWS may pick a subset).
    global ROWS
    ROWS = [(r, label) for r, label in ROWS if any(k[1] == r for k in med)]
    present = [e for e in ENGINES if any((e, r) in med for r, _ in ROWS)]
    repl = [e for e in present if e in REPLICATED]

    lines = ["# NBD write benchmark: drl, drl replicated, qemu-storage-daemon", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "Medians over the repeats. Ratios: `repl/drl` = replicated / unreplicated drl (the"
        " replication cost; goal >= 0.90 at QD 32), `drl/qsd` = unreplicated drl / qemu-storage-daemon"
        " (goal >= 1.00). The replicated columns pay for the Secondary on the same host"
        " (same CPUs; with `drl repl` the same disk too).",
        "",
    ]

    def table(title, key, digits):
        head = [LABEL[e] for e in present]
        ratios = [f"{LABEL[e]} / drl" for e in repl if "drl" in present]
        if "drl" in present and "qsd" in present:
            ratios.append("drl / qsd")
        if "drl" in present and "drlnull" in present:
            ratios.append("drl / drl null")
        if "drlnull" in present and "qsdnull" in present:
            ratios.append("drl null / qsd null-co")
        out = [f"**{title}**", "", "| row | " + " | ".join(head + ratios) + " |"]
        out.append("|---|" + "---:|" * (len(head) + len(ratios)))
        for row, label in ROWS:
            cells = [fmt(med[(e, row)][key], digits) if (e, row) in med else "-" for e in present]
            d = med.get(("drl", row))
            if "drl" in present:
                cells += [fmt(ratio(med.get((e, row)), d, key), 2) for e in repl]
            if "drl" in present and "qsd" in present:
                cells.append(fmt(ratio(d, med.get(("qsd", row)), key), 2))
            dn = med.get(("drlnull", row))
            if "drl" in present and "drlnull" in present:
                cells.append(fmt(ratio(d, dn, key), 2))
            if "drlnull" in present and "qsdnull" in present:
                cells.append(fmt(ratio(dn, med.get(("qsdnull", row)), key), 2))
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        return out + [""]

    lines += table("IOPS", "iops", 0)
    lines += table("MiB/s", "mib_s", 1)
    lat = ["**Completion latency p50 / p99 (us)**", ""]
    lat.append("| row | " + " | ".join(LABEL[e] for e in present) + " |")
    lat.append("|---|" + "---:|" * len(present))
    for row, label in ROWS:
        cells = []
        for e in present:
            m = med.get((e, row))
            cells.append("-" if m is None else f"{m['p50_us']:,.0f} / {m['p99_us']:,.0f}")
        lat.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += lat + [""]

    has_cpu = any("cpu0_us" in m for m in med.values())
    if has_cpu:
        head, cols = [], []
        for e in present:
            if e in REPLICATED:
                head += [f"{LABEL[e]}: Primary", f"{LABEL[e]}: Secondary", f"{LABEL[e]}: Primary - drl"]
                cols += [(e, "cpu0_us"), (e, "cpu1_us"), (e, "extra")]
            else:
                head.append(LABEL[e])
                cols.append((e, "cpu0_us"))
        cpu_t = [
            "**Daemon CPU per I/O (us)**: utime+stime over fio's measured seconds / fio's I/Os"
            " (goals: replicated Primary at most 3 us above unreplicated drl, Secondary at most 5 us)",
            "",
            "| row | " + " | ".join(head) + " |",
            "|---|" + "---:|" * len(head),
        ]
        for row, label in ROWS:
            cells = []
            for e, k in cols:
                m = med.get((e, row))
                if k == "extra":
                    d = med.get(("drl", row))
                    v = None if not m or not d or "cpu0_us" not in m or "cpu0_us" not in d else m["cpu0_us"] - d["cpu0_us"]
                    cells.append(fmt(v, 1))
                else:
                    cells.append(fmt(m.get(k) if m else None, 1))
            cpu_t.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += cpu_t + [""]

    if any(k.startswith("n0_") for m in med.values() for k in m):
        lines += [
            "**Per I/O, each daemon** (`--counts`: perf stat over fio's measured seconds / fio's"
            " I/Os): kernel crossings and wake-ups, which barely depend on the machine's load",
            "",
            "| row | column | daemon | " + " | ".join(t for _, t in COUNT_COLS) + " |",
            "|---|---|---|" + "---:|" * len(COUNT_COLS),
        ]
        for row, label in ROWS:
            for e in present:
                m = med.get((e, row))
                if not m:
                    continue
                for i, who in ((0, "Primary" if e in REPLICATED else "daemon"), (1, "Secondary")):
                    if f"n{i}_syscalls" not in m:
                        continue
                    cells = [fmt(m.get(f"n{i}_{k}"), 2) for k, _ in COUNT_COLS]
                    lines.append(f"| {label} | {LABEL[e]} | {who} | " + " | ".join(cells) + " |")
        lines += [""]

    if repl:
        lines += [
            "**Replication lag on the Primary during the runs** (`drl status --json` every 200 ms:"
            " `lag_ms` = age of the oldest write not yet acked by the Secondary, `send_queue_bytes`;"
            " catch-up = seconds from fio's end until in sync)",
            "",
            "| row | column | lag max (ms) | lag p50 (ms) | queue max (MiB) | queue p50 (MiB) | catch-up max (s) | samples |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row, label in ROWS:
            for e in repl:
                d = lag.get((e, row))
                if not d or not d["lag"]:
                    continue
                lines.append(
                    f"| {label} | {LABEL[e]} | {max(d['lag']):,} | {statistics.median(d['lag']):,.0f}"
                    f" | {max(d['queue']) / 2**20:,.1f} | {statistics.median(d['queue']) / 2**20:,.1f}"
                    f" | {fmt(max(d['drain']) if d['drain'] else None, 1)} | {len(d['lag'])} |"
                )
        lines += [""]
        for e in repl:
            lines.append(
                f"- {LABEL[e]}: Secondary byte-identical to the Primary after the run"
                f" (cmp, daemons stopped): **{cmp.get(e, 'not checked')}**"
            )
        lines += [""]

    csv_rows = []
    for row, _ in ROWS:
        r = {"row": row}
        for e in ENGINES:
            m = med.get((e, row))
            for k, digits in (("iops", 1), ("mib_s", 2), ("p50_us", 1), ("p99_us", 1),
                              ("cpu0_us", 2), ("cpu1_us", 2)):
                r[f"{e}_{k}"] = "" if m is None or k not in m else round(m[k], digits)
        d = med.get(("drl", row))
        for e in REPLICATED:
            rr = ratio(med.get((e, row)), d, "iops")
            r[f"{e}_over_drl_iops"] = "" if rr is None else round(rr, 4)
            lg = lag.get((e, row))
            has = bool(lg and lg["lag"])
            r[f"{e}_lag_max_ms"] = max(lg["lag"]) if has else ""
            r[f"{e}_lag_p50_ms"] = statistics.median(lg["lag"]) if has else ""
            r[f"{e}_queue_max_bytes"] = max(lg["queue"]) if has else ""
            r[f"{e}_queue_p50_bytes"] = statistics.median(lg["queue"]) if has else ""
            r[f"{e}_catchup_max_s"] = max(lg["drain"]) if lg and lg["drain"] else ""
            r[f"{e}_identical"] = cmp.get(e, "") == "identical" if e in cmp else ""
        rq = ratio(d, med.get(("qsd", row)), "iops")
        r["drl_over_qsd_iops"] = "" if rq is None else round(rq, 4)
        r["repeats"] = max((med.get((e, row)) or {}).get("n", 0) for e in ENGINES)
        csv_rows.append(r)

    write_outputs(lines, csv_rows, out_md, out_csv)


def write_outputs(lines, csv_rows, out_md, out_csv):
    """The markdown `lines` to stdout and OUT_MD, the dicts `csv_rows` (one header from the
    first) to OUT_CSV."""
    text = "\n".join(lines)
    sys.stdout.write(text)
    with open(out_md, "w") as f:
        f.write(text)
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0].keys()))
        writer.writeheader()
        writer.writerows(csv_rows)


if __name__ == "__main__":
    main()
