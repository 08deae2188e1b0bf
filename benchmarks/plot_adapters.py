"""Plot held-out Dice vs shots per adapter method from ``benchmarks/results/adapters.json``.

python benchmarks/plot_adapters.py benchmarks/results/adapters.json docs/adapters_dice.png

Cross-subject results (``bench_adapters_cross.py``): Dice on the other subject against k and
against training seconds, one row of panels per target::

    python benchmarks/plot_adapters.py benchmarks/results/adapters_cross.json \
        docs/adapters_cross.png
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_cross(doc: dict, out: Path) -> None:
    """Per target: cross-subject Dice vs k (left) and vs training seconds at k=5 (right)."""
    targets = doc["targets"]
    fig, axes = plt.subplots(len(targets), 2, figsize=(11, 3.4 * len(targets)), squeeze=False)
    for (left, right), t in zip(axes, targets, strict=True):
        by_k: dict[str, dict[int, float]] = defaultdict(dict)
        for run in t["runs"]:
            name = f"{run['method']} ({run['head']})"
            by_k[name][run["k"]] = run["cross"]
            if run["seconds_curve"]:
                pts = [(0.0, t["zero_shot_box"]["cross"] if run["head"] == "box" else 0.0)]
                pts += [(c["s"], c["cross"]) for c in run["seconds_curve"]]
                right.plot(*zip(*pts, strict=True), marker="o", label=name)
        for name, pts in by_k.items():
            ks = sorted(pts)
            left.plot(ks, [pts[k] for k in ks], marker="o", label=name)
        for ax in (left, right):
            ax.axhline(t["zero_shot_box"]["cross"], color="k", ls="--", label="zero-shot box")
            ax.set_ylim(0, 1)
            ax.set_ylabel("Dice, other subject")
        left.set_xlabel("annotated training slices (k)")
        right.set_xlabel("training seconds (k=5, snapshots)")
        left.set_title(t["name"], fontsize=9)
        right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)


def main(src: Path, out: Path) -> None:
    doc = json.loads(src.read_text())
    if "targets" in doc:
        plot_cross(doc, out)
        return
    result = doc["results"][0]
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for run in result["runs"]:
        curves[f"{run['method']} ({run['head']})"][run["k"]] = run["dice"]
    fig, ax = plt.subplots(figsize=(8.5, 4))
    for name, pts in curves.items():
        ks = sorted(pts)
        ax.plot(ks, [pts[k] for k in ks], marker="o", label=name)
    ax.axhline(result["zero_shot_box"], color="k", ls="--", label="zero-shot box (no adaptation)")
    ax.set_xlabel("annotated training slices (k)")
    ax.set_ylabel("held-out Dice")
    ax.set_xticks(sorted({k for pts in curves.values() for k in pts}))
    ax.set_ylim(0, 1)
    ax.set_title(f"LiteMedSAM adapters, {result['task']} (Precentral_L), 60 s budget")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
