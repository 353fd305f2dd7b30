#!/usr/bin/python3
"""Plot the CDFs of scripts/bench-detect.sh's CSV as a PNG.

Two panels: kill -> suspicion and kill -> promotion, one curve per probe interval; dashed lines
mark the goals (suspect within 300 ms; the promotion panel marks the lease TTL, after which the
old Primary's lease can expire at the earliest, and TTL + 1 s). Where the CSV has the instant the
lease key disappeared from etcd (expiry_ms), a third panel shows expiry -> promotion, the
decision time the goal "decide within 1 s of the lease expiring" is about.
Needs Debian's python3-matplotlib; run with /usr/bin/python3.

    scripts/detect_plot.py bench-results/detect-TIMESTAMP.csv OUT.png [TTL_S]
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def values(rows, iv, key):
    out = []
    for r in rows:
        if r["interval_ms"] == iv and r.get(key) not in (None, "", "None"):
            out.append(int(r[key]))
    return sorted(out)


def cdf(ax, v, label):
    if not v:
        return
    n = len(v)
    ys = [0.0] + [(i + 1) / n for i in range(n)]
    ax.step([v[0]] + v, ys, where="post", label=f"{label} (n={n})")


def main(src, dst, ttl_s):
    rows = list(csv.DictReader(open(src)))
    ivs = sorted({r["interval_ms"] for r in rows}, key=int)
    decide = "decide_ms" in (rows[0] if rows else {})
    panels = [("suspect_ms", "kill -> suspicion (ms)"), ("promote_ms", "kill -> promoted (ms)")]
    if decide:
        panels.append(("decide_ms", "lease expired in etcd -> promoted (ms)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0))
    for ax, (key, title) in zip(axes, panels):
        for iv in ivs:
            cdf(ax, values(rows, iv, key), f"probe every {iv} ms")
        if key == "suspect_ms":
            ax.axvline(300, ls="--", c="grey", lw=1, label="goal 300 ms")
        elif key == "promote_ms" and ttl_s:
            ax.axvline(ttl_s * 1000, ls=":", c="grey", lw=1, label=f"lease TTL {ttl_s} s")
            ax.axvline(ttl_s * 1000 + 1000, ls="--", c="grey", lw=1, label="TTL + 1 s")
        elif key == "decide_ms":
            ax.axvline(1000, ls="--", c="grey", lw=1, label="goal 1 s")
        ax.set_xlabel(title)
        ax.set_ylabel("fraction of site kills")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle("drl failure detection: CDF over site kills (scripts/bench-detect.sh)")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
