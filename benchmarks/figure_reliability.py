"""Reliability diagrams before and after calibration, from ``fmseg.training.calibrate --json``.

One column per group of the report (the calibration half, the evaluation half, held-out AAL,
LiTS liver); top row over all pixels, bottom row over the band near the structure (where the
uncertain pixels are). Each panel: accuracy (foreground frequency) against confidence (mean
probability) per bin, before and after, with the diagonal and the pixel count per bin (grey
bars, log scale). Writes a PNG::

    python -m fmseg.training.calibrate --weights W.pt --out W.pt --json cal.json
    python benchmarks/figure_reliability.py cal.json --out docs/uncertainty_reliability.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROWS = (("reliability", "all pixels"), ("reliability_band", "near the structure"))


def curve(rel: dict) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and accuracy of the non-empty bins."""
    pts = [
        (c, a)
        for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"], strict=True)
        if n > 0
    ]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def panel(ax, group: dict, key: str, title: str, ece_key: str) -> None:
    """One reliability diagram: before, after, diagonal, counts."""
    edges = np.asarray(group["before"][key]["edges"])
    counts = ax.twinx()
    counts.bar(
        edges[:-1],
        group["after"][key]["count"],
        width=np.diff(edges),
        align="edge",
        color="0.85",
        zorder=0,
    )
    counts.set_yscale("log")
    counts.set_yticks([])
    ax.set_zorder(counts.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for when, style in (("before", "o-"), ("after", "s-")):
        c, a = curve(group[when][key])
        ece = group[when][ece_key]
        ax.plot(c, a, style, ms=3, label=f"{when} (ECE {ece:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left", fontsize=7)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path, help="JSON written by calibrate --json")
    p.add_argument("--out", type=Path, default=Path("docs/uncertainty_reliability.png"))
    args = p.parse_args()
    report = json.loads(args.report.read_text())
    groups = report["groups"]
    fig, axes = plt.subplots(2, len(groups), figsize=(3.2 * len(groups), 6.4), squeeze=False)
    for j, (name, group) in enumerate(groups.items()):
        for i, (key, where) in enumerate(ROWS):
            ece_key = "ece_band" if key.endswith("band") else "ece"
            title = f"{name} ({group['episodes']} episodes)\n{where}"
            panel(axes[i, j], group, key, title, ece_key)
            axes[i, j].set_xlabel("confidence (mean probability)")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (foreground frequency)")
    cal = report["calibration"]
    what = "none" if cal is None else ", ".join(f"{k}={v}" for k, v in cal.items() if k not in "xy")
    fig.suptitle(f"{Path(report['weights']).name}, K = {report['k']}: calibration {what}")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
