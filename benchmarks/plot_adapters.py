"""Plot held-out Dice vs shots per adapter method from ``benchmarks/results/adapters.json``.

python benchmarks/plot_adapters.py benchmarks/results/adapters.json docs/adapters_dice.png
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: Path, out: Path) -> None:
    result = json.loads(src.read_text())["results"][0]
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
