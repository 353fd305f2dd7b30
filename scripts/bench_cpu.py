#!/usr/bin/env python3
"""CPU time of daemons during a benchmark run, for scripts/bench-nbd.sh --cpu.

Usage:
  bench_cpu.py sample OUT PID [PID...]   until SIGTERM, append "t_ms ticks_1 ticks_2 ..." to OUT
        every 50 ms, and once more when told to stop: t_ms is CLOCK_MONOTONIC in milliseconds,
        ticks_i is utime+stime of PID i from /proc/PID/stat (all its threads) in clock ticks.
  bench_cpu.py window OUT SECONDS        print the CPU seconds of each PID over the last SECONDS
        of the samples (the start interpolated between the two samples around it), one line,
        space-separated, followed by the clock tick rate.

The window is the fio run's measured part: the sampler is stopped right after fio exits, so the
last sample is the run's end, and fio's own runtime (without its ramp) is the window. CPU per
I/O is then window CPU / fio's I/Os (done by bench_nbd_table.py).
"""

import os
import signal
import sys
import time

PERIOD_S = 0.05


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces; fields after ')' are fixed.
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15.
    return int(rest[11]) + int(rest[12])


def sample(out, pids):
    stop = False

    def on_term(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with open(out, "a") as f:
        while True:
            t = time.monotonic() * 1000
            try:
                row = [ticks(p) for p in pids]
            except OSError:
                break
            f.write(f"{t:.1f} " + " ".join(map(str, row)) + "\n")
            f.flush()
            if stop:
                break
            time.sleep(PERIOD_S)


def window(out, seconds):
    rows = []
    with open(out) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                rows.append([float(parts[0])] + [int(x) for x in parts[1:]])
    if len(rows) < 2:
        sys.exit(f"{out}: fewer than two samples")
    end = rows[-1]
    t0 = end[0] - seconds * 1000
    if rows[0][0] > t0:
        sys.exit(f"{out}: samples start {end[0] - rows[0][0]:.0f} ms before the end, less than {seconds} s")
    # The last sample at or before t0 and the first after it.
    i = max(k for k, r in enumerate(rows) if r[0] <= t0)
    a, b = rows[i], rows[min(i + 1, len(rows) - 1)]
    frac = 0.0 if b[0] == a[0] else (t0 - a[0]) / (b[0] - a[0])
    hz = os.sysconf("SC_CLK_TCK")
    cpu = [(end[j] - (a[j] + (b[j] - a[j]) * frac)) / hz for j in range(1, len(end))]
    print(" ".join(f"{c:.4f}" for c in cpu), hz)


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "sample":
        sample(sys.argv[2], [int(p) for p in sys.argv[3:]])
    elif len(sys.argv) == 4 and sys.argv[1] == "window":
        window(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
