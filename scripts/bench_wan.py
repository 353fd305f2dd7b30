#!/usr/bin/env python3
"""Helpers of scripts/bench-wan.sh (the WAN benchmark): sampling, QMP, statistics, report.

  bench_wan.py sample DRL CONFIG OUT.csv [--classes]   poll site-a every 250 ms until SIGTERM
  bench_wan.py mirror QMP_SOCK                          blockdev-mirror src -> tgt, print seconds to READY
  bench_wan.py fio-lat FIO.json                          print "p50_us p99_us max_us MiB/s" of a fio run
  bench_wan.py rpo SAMPLES.csv T0 T1                     lag / queue / ahead statistics in [T0, T1]
  bench_wan.py shares SAMPLES.csv GUARANTEE LINK         class rates while all three classes send
  bench_wan.py tcp-sink ADDR PORT WARM SECS              accept one TCP stream, print its goodput (bit/s)
  bench_wan.py tcp-source ADDR PORT SECS                 send zeros to the sink for SECS
  bench_wan.py sync-time DAEMON.log                      seconds from promotion to the peer UpToDate
  bench_wan.py report RAW.csv OUT_STEM META.json         markdown + CSV tables, PNG plots

Times are wall-clock seconds (time.time()); the shell side records them with `date +%s.%N`.
Only the Python standard library, except `report`, which needs matplotlib (run it with Debian's
/usr/bin/python3 and python3-matplotlib).
"""

import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

CLASSES = ("replication", "resync", "snapshot", "image")


# ---- sample -------------------------------------------------------------------------------


def drl_json(drl, cfg, args):
    out = subprocess.run(
        [drl, "--config", cfg, "--node", "site-a", *args],
        capture_output=True,
        timeout=10,
    )
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except ValueError:
        return None


def sample(drl, cfg, out_path, classes):
    """One row every 250 ms: site-a's replication state and, with classes, the shaper's
    cumulative granted bytes per class. Stops on SIGTERM (the row in progress is written)."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    cols = ["t", "lag_ms", "send_queue_bytes", "out_of_sync_bytes", "ahead", "replication"]
    cols += ["nbd_bytes_written"]
    if classes:
        cols += [f"{c}_bytes" for c in CLASSES]
    with open(out_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        nxt = time.time()
        while not stop:
            t = time.time()
            st = drl_json(drl, cfg, ["status", "r0", "--json"])
            sh = drl_json(drl, cfg, ["shaping", "show", "--json"]) if classes else None
            if st and (sh or not classes):
                r = st["resources"][0]
                row = [
                    f"{t:.3f}",
                    r.get("lag_ms", 0),
                    r.get("send_queue_bytes", 0),
                    r.get("out_of_sync_bytes", 0),
                    int(bool(r.get("ahead"))),
                    r.get("replication"),
                    ((r.get("nbd") or {}).get("stats") or {}).get("bytes_written", 0),
                ]
                if classes:
                    by = {c["class"]: c["granted_bytes"] for c in sh["classes"]}
                    row += [by.get(c, 0) for c in CLASSES]
                w.writerow(row)
                f.flush()
            nxt += 0.25
            time.sleep(max(0.0, nxt - time.time()))


# ---- QMP ----------------------------------------------------------------------------------


class Qmp:
    """A minimal QMP client: one command at a time, events kept for wait_event."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rwb")
        self.events = []
        self.read()  # greeting
        self.cmd("qmp_capabilities")

    def read(self):
        line = self.f.readline()
        if not line:
            raise SystemExit("qmp: qemu-storage-daemon closed the monitor")
        return json.loads(line)

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        self.f.flush()
        while True:
            m = self.read()
            if "event" in m:
                self.events.append(m)
            elif "error" in m:
                raise SystemExit(f"qmp: {name}: {m['error']['desc']}")
            elif "return" in m:
                return m["return"]

    def wait_event(self, names, timeout):
        deadline = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] in names:
                    return self.events.pop(i)
            left = deadline - time.time()
            if left <= 0:
                raise SystemExit(f"qmp: no {names} within {timeout} s")
            self.s.settimeout(left)
            m = self.read()
            if "event" in m:
                self.events.append(m)


def mirror(path):
    """blockdev-mirror of node `src` to node `tgt` (sync=full, copy-mode=background); print the
    seconds from the command to BLOCK_JOB_READY (everything copied once), then complete the job
    so that the target is a consistent copy."""
    q = Qmp(path)
    t0 = time.time()
    q.cmd(
        "blockdev-mirror",
        **{"job-id": "m", "device": "src", "target": "tgt", "sync": "full", "copy-mode": "background"},
    )
    e = q.wait_event(("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"), 900)
    t1 = time.time()
    if e["event"] != "BLOCK_JOB_READY":
        raise SystemExit(f"qmp: mirror ended before it was ready: {e}")
    q.cmd("block-job-complete", device="m")
    e = q.wait_event(("BLOCK_JOB_COMPLETED",), 60)
    if e["data"].get("error"):
        raise SystemExit(f"qmp: mirror failed: {e['data']['error']}")
    print(f"{t1 - t0:.3f}")


def sync_time(path):
    """drl's initial sync as the daemon of site A logged it: from the role change to Primary
    (`drl primary --force`) to the state Established with the peer UpToDate. The daemon's own
    timestamps, like QMP's events for QEMU: no polling error in the measurement."""
    from datetime import datetime

    def ts(line):
        return datetime.fromisoformat(line.split()[0].rstrip("Z")).timestamp()

    t0 = t1 = None
    with open(path) as f:
        for line in f:
            if t0 is None and 'role changed resource=r0 role="Primary"' in line:
                t0 = ts(line)
            elif t0 is not None and "replication=Established peer_disk=UpToDate" in line:
                t1 = ts(line)
                break
    if t0 is None or t1 is None:
        raise SystemExit(f"sync-time: no promotion and end of sync in {path}")
    print(f"{t1 - t0:.3f}")


def tcp_sink(addr, port, warm, secs):
    """The link's own goodput, for (a): one plain TCP stream (the same kernel, MTU and tbf as
    drl's replication connection). Bytes counted from WARM s after the first byte for SECS."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    c, _ = ls.accept()
    buf = bytearray(1 << 20)
    c.recv_into(buf)
    start = time.time() + warm
    n, t0 = 0, None
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        now = time.time()
        if now >= start:
            if t0 is None:
                t0 = now
            else:
                n += k
            if now - t0 >= secs:
                break
    print(f"{n * 8 / (time.time() - t0):.0f}")


def tcp_source(addr, port, secs):
    s = socket.create_connection((addr, port))
    buf = bytes(1 << 20)
    end = time.time() + secs
    try:
        while time.time() < end:
            s.sendall(buf)
    except OSError:
        pass  # the sink closed after its window


# ---- statistics ---------------------------------------------------------------------------


def fio_lat(path):
    with open(path) as f:
        text = f.read()
    job = json.loads(text[text.index("{") :])["jobs"][0]["write"]
    clat = job["clat_ns"]
    pct = clat.get("percentile", {})
    p50 = pct.get("50.000000", 0) / 1000
    p99 = pct.get("99.000000", 0) / 1000
    print(f"{p50:.0f} {p99:.0f} {clat['max'] / 1000:.0f} {job['bw_bytes'] / 2**20:.1f}")


def rows(path):
    with open(path) as f:
        return [
            {k: (v if k == "replication" else float(v)) for k, v in r.items()}
            for r in csv.DictReader(f)
        ]


def rpo(path, t0, t1):
    """Print: lag p50 ms, lag max ms, max bytes not yet at B (send queue + out of sync), the
    fraction of samples Ahead."""
    rs = [r for r in rows(path) if t0 <= r["t"] <= t1]
    if not rs:
        print("0 0 0 0")
        return
    lag = [r["lag_ms"] for r in rs]
    behind = [r["send_queue_bytes"] + r["out_of_sync_bytes"] for r in rs]
    ahead = sum(r["ahead"] for r in rs) / len(rs)
    print(f"{statistics.median(lag):.0f} {max(lag):.0f} {max(behind):.0f} {ahead:.2f}")


def contention_window(rs):
    """The samples during which replication, resync and snapshot all moved bytes: from the first
    sample at which every one of them has started to the last sample before any of them stops
    (a class has stopped at its last increase)."""
    names = CLASSES[:3]
    first, last = {}, {}
    for prev, cur in zip(rs, rs[1:]):
        for c in names:
            # More than control frames (barriers, bitmap chunks) on the connection.
            if cur[f"{c}_bytes"] > prev[f"{c}_bytes"] + 65536:
                first.setdefault(c, prev["t"])
                last[c] = cur["t"]
    if len(first) < 3:
        return None
    return max(first.values()), min(last.values())


def shares(path, guarantee, link):
    """Print: window seconds, replication / resync / snapshot rate (B/s) in the window, the
    replication rate over its guarantee, total over the link-rate."""
    rs = rows(path)
    w = contention_window(rs)
    if not w or w[1] - w[0] < 1.0:
        print("0 0 0 0 0 0 0")
        return
    a = min((r for r in rs if r["t"] >= w[0]), key=lambda r: r["t"])
    b = max((r for r in rs if r["t"] <= w[1]), key=lambda r: r["t"])
    dt = b["t"] - a["t"]
    rate = [(b[f"{c}_bytes"] - a[f"{c}_bytes"]) / dt for c in CLASSES]
    # What the application asked for in the window: its writes through NBD.
    demand = (b["nbd_bytes_written"] - a["nbd_bytes_written"]) / dt
    print(
        f"{dt:.1f} {rate[0]:.0f} {rate[1]:.0f} {rate[2]:.0f} "
        f"{rate[0] / guarantee:.3f} {sum(rate) / link:.3f} {demand:.0f}"
    )


# ---- report -------------------------------------------------------------------------------

# (part, metric, label, unit, goal) — the table's rows in order.
TABLE = [
    ("goodput", "tcp_fraction", "(a) plain TCP stream on the same link / shaped rate (the peer)", "", ""),
    ("goodput", "random_fraction", "(a) replication goodput, random data / shaped rate", "", ">= 0.95"),
    ("goodput", "random_mbit", "(a) replication goodput, random data", "Mbit/s", ""),
    ("goodput", "random_vs_tcp", "(a) replication goodput / plain TCP goodput", "", ""),
    ("goodput", "zstd_app_mbit", "(a) application write rate, compressible data (zstd)", "Mbit/s", ""),
    ("goodput", "zstd_app_fraction", "(a) ... as a multiple of the shaped rate", "x", ""),
    ("goodput", "zstd_wire_ratio", "(a) ... wire bytes / application bytes", "", ""),
]
for mode in ("block", "pull-ahead"):
    for phase, what in (("steady", "steady writes at 50% of the link"), ("burst", "burst at 200% of the link")):
        p = f"rpo-{mode}-{phase}"
        TABLE += [
            (p, "lag_p50_ms", f"(b) {mode}, {what}: lag p50", "ms", ""),
            (p, "lag_max_ms", f"(b) {mode}, {what}: lag max", "ms", ""),
            (p, "behind_max_mib", f"(b) {mode}, {what}: max not yet at B", "MiB", ""),
            (p, "ahead_fraction", f"(b) {mode}, {what}: time Ahead", "", ""),
            (p, "clat_p50_us", f"(b) {mode}, {what}: write clat p50 (fio nbd)", "us", ""),
            (p, "clat_p99_us", f"(b) {mode}, {what}: write clat p99 (fio nbd)", "us", ""),
            (p, "app_mib_s", f"(b) {mode}, {what}: application write rate", "MiB/s", ""),
        ]
        if phase == "burst":
            TABLE += [(p, "catchup_s", f"(b) {mode}, {what}: in sync again after the burst", "s", "")]
TABLE += [
    ("classes", "window_s", "(c) contention window (all three classes sending)", "s", ""),
    ("classes", "replication_mbit", "(c) replication rate in the window", "Mbit/s", ""),
    ("classes", "resync_mbit", "(c) resync rate in the window", "Mbit/s", ""),
    ("classes", "snapshot_mbit", "(c) snapshot (bulk) rate in the window", "Mbit/s", ""),
    ("classes", "demand_mbit", "(c) application writes in the window (replication's demand)", "Mbit/s", ""),
    ("classes", "replication_vs_guarantee", "(c) replication / its guarantee (50% of drl's link-rate)", "", ">= 0.95"),
    ("classes", "total_vs_link", "(c) all classes / drl's link-rate", "", "<= 1.05"),
]
for vol in ("random", "half"):
    name = {"random": "random-data volume", "half": "half-empty volume"}[vol]
    TABLE += [
        (f"sync-{vol}", "drl_s", f"(d) {name}: drl initial sync", "s", ""),
        (f"sync-{vol}", "qemu_s", f"(d) {name}: qemu blockdev-mirror to READY", "s", ""),
    ]
    if vol == "half":
        TABLE += [(f"sync-{vol}", "qemu_dz_s", f"(d) {name}: qemu mirror, target detect-zeroes=on", "s", "")]
    TABLE += [
        (
            f"sync-{vol}",
            "speedup",
            f"(d) {name}: qemu time / drl time",
            "x",
            ">= 1.0" if vol == "random" else ">= 2.0",
        )
    ]
    if vol == "half":
        TABLE += [(f"sync-{vol}", "speedup_dz", f"(d) {name}: qemu (detect-zeroes) time / drl time", "x", "")]
    TABLE += [(f"sync-{vol}", "drl_zero_mib", f"(d) {name}: drl bytes sent as zero ranges", "MiB", "")]


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def report(raw_path, stem, meta_path):
    with open(meta_path) as f:
        meta = json.load(f)
    vals = {}  # (rate, part, metric) -> [values over repeats]
    rates = []
    with open(raw_path) as f:
        for r in csv.DictReader(f):
            rate = r["rate"]
            if rate not in rates:
                rates.append(rate)
            try:
                v = float(r["value"])
            except ValueError:
                continue
            vals.setdefault((rate, r["part"], r["metric"]), []).append(v)

    def val(rate, part, metric):
        v = vals.get((rate, part, metric))
        return statistics.median(v) if v else None

    out = [f"# WAN benchmark ({meta.get('date', '')})", ""]
    out += [f"- {k}: {v}" for k, v in meta.items() if k != "notes"]
    out += [""]
    head = "| metric | unit | goal | " + " | ".join(rates) + " |"
    out += [head, "|---|---|---|" + "---|" * len(rates)]
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["part", "metric", "unit", "goal", *rates])
        for part, metric, label, unit, goal in TABLE:
            vs = [val(r, part, metric) for r in rates]
            if all(v is None for v in vs):
                continue
            w.writerow([part, metric, unit, goal, *("" if v is None else f"{v:.6g}" for v in vs)])
            out.append(f"| {label} | {unit} | {goal} | " + " | ".join(fmt(v) for v in vs) + " |")
    out += [""] + meta.get("notes", [])
    with open(stem + ".md", "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))
    plot(stem, rates)


def plot(stem, rates):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib missing, no plots (apt-get install python3-matplotlib)", file=sys.stderr)
        return
    for rate in rates:
        path = f"{stem}-classes-{rate}.csv"
        if not os.path.exists(path):
            continue
        rs = rows(path)
        if len(rs) < 2:
            continue
        t0 = rs[0]["t"]
        fig, ax = plt.subplots(figsize=(7, 4))
        for c in CLASSES:
            ys = [(r[f"{c}_bytes"] - rs[0][f"{c}_bytes"]) / 2**20 for r in rs]
            if ys[-1] > 0:
                ax.plot([r["t"] - t0 for r in rs], ys, label=c)
        w = contention_window(rs)
        if w:
            ax.axvspan(w[0] - t0, w[1] - t0, color="grey", alpha=0.15, label="all three sending")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("cumulative bytes granted (MiB)")
        ax.set_title(f"drl classes on a {rate} link (drl link-rate 90%, shares 50/25/24/1)")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(f"{stem}-classes-{rate}.png", dpi=100)
        plt.close(fig)


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "sample":
        sample(argv[2], argv[3], argv[4], "--classes" in argv[5:])
    elif cmd == "mirror":
        mirror(argv[2])
    elif cmd == "fio-lat":
        fio_lat(argv[2])
    elif cmd == "rpo":
        rpo(argv[2], float(argv[3]), float(argv[4]))
    elif cmd == "shares":
        shares(argv[2], float(argv[3]), float(argv[4]))
    elif cmd == "tcp-sink":
        tcp_sink(argv[2], int(argv[3]), float(argv[4]), float(argv[5]))
    elif cmd == "tcp-source":
        tcp_source(argv[2], int(argv[3]), float(argv[4]))
    elif cmd == "sync-time":
        sync_time(argv[2])
    elif cmd == "report":
        report(argv[2], argv[3], argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
