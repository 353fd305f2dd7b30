#!/usr/bin/python3
"""Plot a drill's timeline (timeline.csv from scripts/drill.sh) as a PNG.

Each event is a marker on its site's row (A, B, both); the phases that make the RTO (kill ->
detected -> promoted -> first read) are shaded, as in the paper's Figure 11 a recovery is
split into its steps. Needs Debian's python3-matplotlib; run with /usr/bin/python3.
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    rows = list(csv.DictReader(open(src)))
    t = {r["event"]: int(r["t_ms"]) / 1000 for r in rows}
    lanes = {"a": 2, "b": 1, "-": 0}
    fig, ax = plt.subplots(figsize=(11, 3.6))
    phases = [
        ("workload-start", "killed", "workload at A", "#cfe8cf"),
        ("killed", "suspected", "suspicion", "#f6c6c6"),
        ("suspected", "promoted", "lease expiry + promotion", "#f9dfb3"),
        ("promoted", "first-read", "to first read", "#c9d8f2"),
        ("restarted", "resynced", "fail back resync", "#e0d0f0"),
    ]
    for a, b, label, colour in phases:
        if a in t and b in t:
            ax.axvspan(t[a], t[b], color=colour, alpha=0.8, label=f"{label}: {t[b] - t[a]:.3f} s")
    for i, r in enumerate(rows):
        x, y = int(r["t_ms"]) / 1000, lanes.get(r["site"], 0)
        ax.plot([x], [y], "ko", ms=4)
        ax.annotate(r["event"], (x, y), textcoords="offset points", xytext=(2, 6 + 9 * (i % 3)),
                    fontsize=7, rotation=20)
    ax.set_yticks([0, 1, 2], ["both", "site B", "site A"])
    ax.set_ylim(-0.6, 3.0)
    ax.set_xlabel("seconds since the drill started")
    ax.set_title("drl disaster drill: timeline")
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
