"""Figure of the training corpus: real vs synthetic brain, and example episodes.

Row 1: an axial slice of the real Colin27 T1, the same slice synthesised from the Colin27 AAL
map with the fixed benchmark contrast (``fmseg.training.heldout.synthetic_volume``), and two
random SynthSeg-style contrasts of it (as training draws them); a held-out Desikan-Killiany
brain with the fixed contrast. Rows 2-5: one episode of each kind (real, synthetic from a label
map, cross-subject, random shapes), 3 supports and the query, target outlined in red.
Usage::

    PYTHONPATH=core python benchmarks/figure_corpus.py --out docs/dev/corpus_examples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from fmseg.incontext.support import normalise
from fmseg.training.corpus import load_corpus
from fmseg.training.episodes import EpisodeSampler, Mix
from fmseg.training.heldout import synthetic_volume
from fmseg.training.synth import draw_appearance, synthesize


def brain_row(records: dict) -> list[tuple[str, np.ndarray]]:
    """Real Colin27 slice, its synthetic versions, and a held-out DK brain."""
    colin = records["colin27-aal"]
    z = 80
    real = normalise(colin.image)[:, :, z]
    out = [("Colin27 T1 (real)", real)]
    out.append(("synthetic from AAL, fixed contrast", synthetic_volume(colin.labels)[:, :, z]))
    lab = torch.from_numpy(colin.labels[:, :, z][None].astype(np.int16))
    for seed in (1, 2):
        app = draw_appearance(int(colin.labels.max()) + 1, np.random.default_rng(seed))
        img, _ = synthesize(lab, app, torch.Generator().manual_seed(seed))
        out.append((f"synthetic, random contrast {seed}", img[0].numpy()))
    dk = records["dk-15697"]
    out.append(("held-out DK brain (synthetic)", synthetic_volume(dk.labels)[:, :, 90]))
    return out


def episode_rows(records: list, seed: int = 3) -> list[tuple[str, list]]:
    """One episode per kind: (title, [(image, mask) x 4])."""
    kinds = {
        "real": Mix(real=1, synth=0, shapes=0, cross=0, merge=0, split=0, empty=0),
        "synthetic from a label map": Mix(
            real=0, synth=1, shapes=0, cross=0, merge=0, split=0, empty=0
        ),
        "cross-subject (supports and query from two brains)": Mix(
            real=0, synth=1, shapes=0, cross=1, merge=0, split=0, empty=0
        ),
        "random shapes": Mix(real=0, synth=0, shapes=1, cross=0, merge=0, split=0, empty=0),
    }
    rows = []
    only_dk = {r.subject: float(r.subject.startswith("dk-")) for r in records}
    for title, mix in kinds.items():
        weights = only_dk if title.startswith("cross") else None
        sampler = EpisodeSampler(records, "train", mix, weights)
        rng = np.random.default_rng(seed)
        si, sm, qi, qm = sampler.episode(3, rng)
        pairs = [(si[i, 0].numpy(), sm[i, 0].numpy()) for i in range(3)]
        rows.append((title, pairs + [(qi[0].numpy(), qm[0].numpy())]))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Draw and save the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/dev/corpus_examples.png"))
    args = p.parse_args(argv)
    records = load_corpus(build_missing=False)
    by_id = {r.id: r for r in records}
    brains = brain_row(by_id)
    episodes = episode_rows([r for r in records if r.id not in ("colin27-brain",)])
    fig, axes = plt.subplots(5, 5, figsize=(15, 15.5))
    for ax, (title, img) in zip(axes[0], brains, strict=True):
        ax.imshow(np.rot90(img), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    for row, (title, pairs) in zip(axes[1:], episodes, strict=True):
        for col, (img, mask) in enumerate(pairs):
            row[col].imshow(img, cmap="gray", vmin=0, vmax=1)
            if mask.any():
                row[col].contour(mask, levels=[0.5], colors="red", linewidths=1)
            row[col].set_title(("query" if col == 3 else f"support {col + 1}"), fontsize=9)
        row[4].axis("off")
        row[4].text(0, 0.5, title, fontsize=11, wrap=True, va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
