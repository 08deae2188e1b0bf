"""Click-benchmark targets on the corpus's held-out split (see ``bench_clicks.py --groups``).

The 3D targets of :func:`fmseg.training.heldout.heldout_targets` (held-out subjects, held-out
structures) are cut into 2D click targets: along each target's axis, :data:`PER_TARGET`
slices evenly spaced between the structure's first and last slice, and on each slice the
largest 4-connected component of at least ``MIN_PX`` pixels (a user clicks one object). The
image slice is windowed as the product does (the volume's window) and embedded once; the
embeddings are kept in ``--emb-cache`` (default ``.cache/emb-heldout``) by target name, axis and
slice, so a rerun only decodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fmseg.interactive.predictor import SamPredictor, SliceEmbedding
from fmseg.training import clicks as ck
from fmseg.training.corpus import load_corpus
from fmseg.training.embed_cache import MIN_PX
from fmseg.training.heldout import heldout_targets
from fmseg.transforms import intensity_window

PER_TARGET = 4
CORPUS_GROUPS = ("heldout-subjects", "heldout-structures")
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "emb-heldout"


def _slices(mask: np.ndarray, axis: int) -> list[int]:
    counts = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    idx = np.flatnonzero(counts >= MIN_PX)
    if idx.size == 0:
        return []
    picks = np.linspace(idx[0], idx[-1], PER_TARGET + 2)[1:-1].round().astype(int)
    return sorted({int(idx[np.argmin(np.abs(idx - p))]) for p in picks})


def _embedding(pred: SamPredictor, image, window, spacing, path: Path) -> SliceEmbedding:
    x, frame = pred.preprocess(image, window, spacing)
    if path.is_file():
        feats = torch.load(path, map_location="cpu", weights_only=True)
    else:
        feats = pred.embed_batch(x).half().cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(feats, tmp)
        tmp.replace(path)
    return SliceEmbedding(feats.float().to(pred.device), frame)


def corpus_click_targets(
    groups: list[str], pred: SamPredictor, corpus: Path | None = None, cache: Path = CACHE
) -> list[tuple]:
    """``(group, SliceEmbedding, gt, first click)`` rows of the asked corpus groups.

    Args:
        groups: Subset of :data:`CORPUS_GROUPS`.
        pred: Predictor whose encoder embeds the slices (the frozen LiteMedSAM encoder).
        corpus: Corpus folder (default cache).
        cache: Embedding cache folder.
    """
    if not groups:
        return []
    rows = []
    for t in heldout_targets(load_corpus(corpus), tuple(groups)):
        axis, image = t["axis"], t["image"]
        window = intensity_window(image, t["window"])
        spacing = tuple(s for a, s in enumerate(t.get("spacing", (1.0,) * 3)) if a != axis)
        for i in _slices(t["labels"] > 0, axis):
            gt = ck.largest_component(np.take(t["labels"], i, axis=axis) > 0)
            if gt.sum() < MIN_PX:
                continue
            img = np.take(image, i, axis=axis)
            name = t["name"].replace("/", "_").replace(":", "_")
            emb = _embedding(pred, img, window, spacing, cache / f"{name}_a{axis}_{i}.pt")
            rows.append((t["group"], emb, gt, ck.first_click(gt)))
    return rows
