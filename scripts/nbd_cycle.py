#!/usr/bin/env python3
"""Where one NBD connection's time goes: read a `perf script` dump of block and scheduler
tracepoints and system calls (recorded by scripts/trace-nbd-cycle.sh) and print, per setup, a
table row: the disk's write rate, how much of the time it had nothing to do (no write issued to
it), the depth it ran at, how many writes it completed per burst, and the median times of the
steps around the disk:

  disk done -> server reply      last completion of a burst to the server's next send
  server reply -> client resent  the client's loop answering the burst with new requests
  client's last send -> submit   the server reading those requests and submitting them
  CPU us per write               the server's and the client's on-CPU time (sched_switch)
                                 divided by the disk's writes in the window

Usage: nbd_cycle.py SETUP PERF_SCRIPT_TXT SERVER_TIDS CLIENT_TIDS   (tids comma-separated)
Prints one JSON object (the row) on stdout; `nbd_cycle.py --table ROW.json...` prints the table.
"""
import bisect
import json
import re
import statistics
import sys

LINE = re.compile(r"\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+(\S+):(.*)")
WRITE_RQ = re.compile(r":?\s*\d+,\d+ W")
BURST_GAP_S = 20e-6
STALE_S = 0.1
SECTOR = re.compile(r"\(\)\s+(\d+ \+ \d+)")
SENDS = ("sendto", "sendmsg", "write", "writev")
SUBMITS = ("io_uring_enter", "io_submit")


def parse(path):
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if m:
            yield float(m.group(4)), int(m.group(2)), m.group(5), m.group(6)


def sector(rest):
    m = SECTOR.search(rest)
    return m.group(1) if m else rest


def syscall(ev):
    return ev.split("sys_enter_", 1)[1] if ev.startswith("syscalls:sys_enter_") else None


def median_us(xs):
    return round(statistics.median(xs) * 1e6) if xs else None


def analyse(setup, path, server, client):
    issue, done, marks = [], [], []
    on_cpu = {"server": 0.0, "client": 0.0}
    since = {}  # tid -> when it was switched in
    switch = re.compile(r"prev_pid=(\d+).*next_pid=(\d+)")
    for t, tid, ev, rest in parse(path):
        who = "server" if tid in server else "client" if tid in client else None
        if ev == "block:block_rq_issue" and WRITE_RQ.match(rest):
            issue.append((t, sector(rest)))
        elif ev == "block:block_rq_complete" and WRITE_RQ.match(rest):
            done.append((t, sector(rest)))
        elif ev == "sched:sched_switch":
            m = switch.search(rest)
            if m:
                prev, nxt = int(m.group(1)), int(m.group(2))
                for role, tids in (("server", server), ("client", client)):
                    if prev in tids and prev in since:
                        on_cpu[role] += t - since.pop(prev)
                    if nxt in tids:
                        since[nxt] = t
        elif who:
            name = syscall(ev)
            if name in SENDS:
                marks.append((t, who + "_send"))
            elif who == "server" and name in SUBMITS:
                marks.append((t, "submit"))
    if not issue or not done:
        sys.exit(f"nbd_cycle: {setup}: no disk writes in the trace {path}")
    # Time-weighted depth at the disk: writes matched by sector, so a lost trace event (perf
    # drops some under load) or a write issued before the window does not skew the depth.
    ev = sorted([(t, 1, s) for t, s in issue] + [(t, -1, s) for t, s in done])
    at_disk, last, idle, weighted = {}, ev[0][0], 0.0, 0.0
    for t, d, s in ev:
        if not at_disk:
            idle += t - last
        weighted += len(at_disk) * (t - last)
        last = t
        if d > 0:
            at_disk[s] = t
        else:
            at_disk.pop(s, None)
        for old in [k for k, v in at_disk.items() if t - v > STALE_S]:
            del at_disk[old]  # its completion was lost
    window = ev[-1][0] - ev[0][0]
    if window <= 0:
        sys.exit(f"nbd_cycle: {setup}: the disk's writes in {path} span no time")
    done = [t for t, _ in done]
    # Completion bursts: completions less than BURST_GAP_S apart.
    sizes, cur, ends = [], 1, []
    for a, b in zip(done, done[1:]):
        if b - a < BURST_GAP_S:
            cur += 1
        else:
            sizes.append(cur)
            ends.append(a)
            cur = 1
    sizes.sort()
    marks.sort()
    to_reply, to_resend, to_submit = [], [], []
    times = [m[0] for m in marks]
    for end in ends:
        i = bisect.bisect_right(times, end)
        # The server's next reply after the burst, the client's sends after that reply up to
        # the server's next submission, and that submission.
        while i < len(marks) and marks[i][1] != "server_send":
            i += 1
        if i >= len(marks):
            break
        t_reply = marks[i][0]
        last_client, j = None, i + 1
        while j < len(marks) and marks[j][1] != "submit":
            if marks[j][1] == "client_send":
                last_client = marks[j][0]
            j += 1
        if j >= len(marks) or last_client is None:
            continue
        to_reply.append(t_reply - end)
        to_resend.append(last_client - t_reply)
        to_submit.append(marks[j][0] - last_client)
    writes = len(issue)
    return {
        "setup": setup,
        "writes_per_s": round(writes / window),
        "disk_idle_pct": round(100 * idle / window),
        "mean_depth": round(weighted / window, 1),
        "burst_median": sizes[len(sizes) // 2] if sizes else None,
        "done_to_reply_us": median_us(to_reply),
        "reply_to_resent_us": median_us(to_resend),
        "resent_to_submit_us": median_us(to_submit),
        "server_cpu_us": round(on_cpu["server"] / writes * 1e6, 1),
        "client_cpu_us": round(on_cpu["client"] / writes * 1e6, 1),
        "cycles": len(to_reply),
    }


def table(rows):
    cols = [
        ("setup", "setup"),
        ("writes_per_s", "disk writes/s"),
        ("disk_idle_pct", "disk idle %"),
        ("mean_depth", "mean depth"),
        ("burst_median", "completions per burst (median)"),
        ("done_to_reply_us", "disk done -> reply (us)"),
        ("reply_to_resent_us", "reply -> client resent (us)"),
        ("resent_to_submit_us", "client's last send -> submit (us)"),
        ("server_cpu_us", "server CPU us/write"),
        ("client_cpu_us", "client CPU us/write"),
    ]
    out = ["| " + " | ".join(h for _, h in cols) + " |", "|---" + "|---:" * (len(cols) - 1) + "|"]
    for r in rows:
        cell = lambda k: "-" if r.get(k) is None else (f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]))
        out.append("| " + " | ".join(cell(k) for k, _ in cols) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--table":
        print(table([json.load(open(p)) for p in sys.argv[2:]]))
        sys.exit(0)
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    ids = lambda s: {int(x) for x in s.split(",") if x}
    print(json.dumps(analyse(sys.argv[1], sys.argv[2], ids(sys.argv[3]), ids(sys.argv[4]))))
