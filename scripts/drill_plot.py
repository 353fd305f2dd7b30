#!/usr/bin/python3
"""Plot a drill's timeline (timeline.csv from scripts/drill.sh) as a PNG.

Top: each event a marker on its site's row (A, B, both), the drill's phases shaded. Bottom:
the recovery as the paper's Figure 11 splits it, one bar per step from the kill (suspicion,
decision, promote, the orchestrator's check, import, rewrite + stack) up to the stack's
CREATE_COMPLETE and the first read of the recovered volumes. Needs Debian's
python3-matplotlib; run with /usr/bin/python3.
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (from event, to event, label, colour): consecutive steps of the drill.
PHASES = [
    ("workload-start", "killed", "workload at A", "#cfe8cf"),
    ("killed", "suspected", "suspicion", "#f6c6c6"),
    ("suspected", "lease-taken", "decision (A's lease expires)", "#f9dfb3"),
    ("lease-taken", "promoted", "promote", "#f3e79b"),
    ("promoted", "failover-start", "failover starts", "#d9ead3"),
    ("failover-start", "recovery-check", "check (Keystone, leases)", "#c9d8f2"),
    ("recovery-check", "imported", "promote + import (Cinder)", "#b4c7e7"),
    ("imported", "stack-complete", "rewrite + stack (Heat, Nova)", "#9fc5e8"),
    ("restarted", "resynced", "fail back resync", "#e0d0f0"),
]
# Bars of the recovery, each from the kill's point of view.
STEPS = PHASES[1:8]


def main(src, dst):
    rows = list(csv.DictReader(open(src)))
    t = {}
    for r in rows:
        t.setdefault(r["event"], int(r["t_ms"]) / 1000)
    lanes = {"a": 2, "b": 1, "-": 0}
    fig, (ax, gx) = plt.subplots(2, 1, figsize=(11, 6.4), gridspec_kw={"height_ratios": [3, 2]})
    for a, b, label, colour in PHASES:
        if a in t and b in t and t[b] >= t[a]:
            ax.axvspan(t[a], t[b], color=colour, alpha=0.8, label=f"{label}: {t[b] - t[a]:.3f} s")
    for i, r in enumerate(rows):
        x, y = int(r["t_ms"]) / 1000, lanes.get(r["site"], 0)
        ax.plot([x], [y], "ko", ms=4)
        ax.annotate(r["event"], (x, y), textcoords="offset points", xytext=(2, 6 + 9 * (i % 3)),
                    fontsize=7, rotation=20)
    ax.set_yticks([0, 1, 2], ["both", "site B", "site A"])
    ax.set_ylim(-0.6, 4.0)
    ax.set_xlabel("seconds since the drill started")
    ax.set_title("drl disaster drill: timeline")
    ax.legend(loc="upper left", fontsize=7, ncol=3)

    kill = t.get("killed")
    steps = [(a, b, lbl, c) for a, b, lbl, c in STEPS if kill is not None and a in t and b in t]
    ends = [("first-read", "first read at B (data)"), ("stack-complete", "CREATE_COMPLETE (workload)")]
    for i, (a, b, label, colour) in enumerate(steps):
        x0, w = t[a] - kill, max(t[b] - t[a], 0.0)
        gx.barh(i, w, left=x0, color=colour, edgecolor="k", linewidth=0.4)
        gx.annotate(f"{label} {w:.3f} s", (x0 + w, i), textcoords="offset points", xytext=(4, -3), fontsize=7)
    for ev, label in ends:
        if kill is not None and ev in t:
            gx.axvline(t[ev] - kill, color="k", ls="--", lw=0.8)
            gx.annotate(f"{label}: {t[ev] - kill:.3f} s", (t[ev] - kill, len(steps) - 0.4),
                        textcoords="offset points", xytext=(3, 0), fontsize=7)
    gx.set_yticks(range(len(steps)), [s[2].split(" (")[0] for s in steps], fontsize=7)
    gx.invert_yaxis()
    gx.set_xlabel("seconds since site A was killed")
    gx.set_title("recovery, step by step (RTO)", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
