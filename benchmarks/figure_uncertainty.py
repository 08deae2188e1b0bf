"""Figure of Tyche samples on held-out slices: image, truth, K samples, mean, entropy.

Same data and protocol as ``bench_uncertainty.py`` (8 interleaved supports, held-out queries);
for the liver and for the AAL structures, the query with the median best-candidate Dice (a
typical case, not a chosen success). Writes a PNG:

    PYTHONPATH=core python benchmarks/figure_uncertainty.py --out docs/uncertainty_samples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from bench_incontext import DATA, load_targets, make_support  # noqa: E402
from bench_uncertainty import queries_for  # noqa: E402

from fmseg import metrics as M
from fmseg import uncertainty as U  # noqa: E402
from fmseg.incontext import build_sampler, normalise, volume_window  # noqa: E402
from fmseg.incontext.segment import binary_supports  # noqa: E402


def sample_target(sampler, t: dict) -> list[tuple]:
    """(image, truth, samples, name, best Dice) of every query of target ``t``."""
    sup, qry = queries_for(t, 8)
    win = t["window"] if t["window"] is not None else volume_window(t["image"])
    q = normalise(np.moveaxis(t["image"], t["axis"], 0)[qry], win)
    gt = np.moveaxis(t["labels"], t["axis"], 0)[qry] > 0
    s = sampler.sample(sampler.prepare(binary_supports(make_support(t, sup, False), None)), q)
    return [
        (q[j], gt[j], s[:, j], f"{t['name']} slice {qry[j]}", M.best_candidate_dice(s[:, j], gt[j]))
        for j in range(len(qry))
        if gt[j].any()
    ]


def median_case(cases: list[tuple]) -> tuple:
    """The case with the median best-candidate Dice."""
    return sorted(cases, key=lambda c: c[4])[len(cases) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sampler", default="tyche-small")
    p.add_argument("--out", type=Path, default=Path("docs/uncertainty_samples.png"))
    args = p.parse_args()
    sampler = build_sampler(args.sampler, k=8, device="cpu")
    targets = load_targets(DATA)
    rows = []
    for group in ("liver", "aal"):
        cases = [c for t in targets if t["group"] == group for c in sample_target(sampler, t)]
        rows.append(median_case(cases))
    fig, axes = plt.subplots(len(rows), 12, figsize=(24, 2.4 * len(rows)))
    for ax_row, (img, gt, s, name, best) in zip(axes, rows, strict=True):
        panels = [img, gt, *s, U.mean_probability(s), U.entropy(s)]
        titles = [name, f"truth (best cand. {best:.2f})"]
        titles += [f"sample {k + 1}" for k in range(len(s))] + ["mean", "entropy"]
        for ax, panel, title in zip(ax_row, panels, titles, strict=True):
            cmap = "magma" if title == "entropy" else "gray"
            ax.imshow(panel, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
