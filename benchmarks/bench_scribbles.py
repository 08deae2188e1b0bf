"""Benchmark scribble, lasso and start-from-mask conversions on held-out slices; prints JSON.

Targets are those of ``bench_clicks.py`` (``--groups``: ``liver``, ``tumour``, ``aal`` from the
embedding cache, ``heldout-subjects``, ``heldout-structures`` from the corpus's held-out split).
Simulated users (seeded, one draw per target):

* **scribble**: a path along the middle part of the object's skeleton (ordered along its main
  axis, a random 40-90 % of its extent), kept inside the object: a user stroking the object.
* **lasso**: the boundary of the object grown by 1-8 % of its equivalent diameter, cut to
  16 vertices, each jittered by 3 % of that diameter: a user drawing around it.
* **start mask**: the object shifted by up to 15 % and eroded or dilated by up to 8 % of its
  equivalent diameter (what a propagated or in-context result looks like), then 3 corrective
  clicks (each at the centre of the largest error region).

Methods (Dice at probability 0.5 in slice pixels, mean over targets):

* baselines ``click`` (one centre click, click decoder) and ``box`` (tight box, LiteMedSAM);
* ``scribble_seq_k``: ``k`` points along the scribble decoded one at a time with the previous
  logits fed back; ``scribble_enforced_k``: the same, then every point enforced model-free (the
  product's route, ``refine.decode_prompts``); ``scribble_once_k``: all ``k`` in one decode;
* ``lasso_fill`` (the polygon itself), ``lasso_box`` (its box, LiteMedSAM), ``lasso_box_clip``
  (that prediction clipped to the polygon), ``lasso_box_mask`` (box + polygon as mask input);
* ``mask_modelfree`` (clicks edit the start mask with :func:`refine_with_click`, no model),
  ``mask_modelfree_box`` (the same with LiteMedSAM's probabilities from the mask's box),
  ``mask_decoder`` (click decoder, start mask as mask input, clicks decoded one at a time).

Usage::

    PYTHONPATH=core python benchmarks/bench_scribbles.py [--points-weights PATH] [--limit N] \
        [--groups liver,tumour,aal] [--out benchmarks/results/scribbles.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours
from skimage.morphology import skeletonize

from fmseg.interactive import scribbles as sc
from fmseg.interactive.predictor import SamPredictor
from fmseg.interactive.prompts import Box, Prompts
from fmseg.interactive.refine import refine_with_click, refine_with_clicks
from fmseg.registry import WEIGHTS_DIR, load_model
from fmseg.training import clicks as ck

try:
    from bench_clicks import add_target_arguments, load_targets, run_and_print, trained_model
except ImportError:  # imported as benchmarks.bench_scribbles
    from benchmarks.bench_clicks import (
        add_target_arguments,
        load_targets,
        run_and_print,
        trained_model,
    )

KS = (1, 2, 3, 5, 8)
START_CLICKS = 3


def eq_diameter(gt: np.ndarray) -> float:
    """Diameter of the disk with the object's area."""
    return float(2 * np.sqrt(gt.sum() / np.pi))


def simulate_scribble(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(V, 2)`` ``(x, y)`` path along the middle of the object's skeleton, inside it."""
    skel = skeletonize(gt)
    rows, cols = np.nonzero(skel if skel.sum() >= 2 else gt)
    pts = np.column_stack([cols, rows]).astype(float)
    centred = pts - pts.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    t = centred @ axis
    span = rng.uniform(0.4, 0.9)
    lo = rng.uniform(0, 1 - span)
    q0, q1 = np.quantile(t, [lo, lo + span])
    keep = np.flatnonzero((t >= q0) & (t <= q1))
    if keep.size < 2:
        keep = np.argsort(np.abs(t))[:2]
    order = keep[np.argsort(t[keep])]
    path = pts[order][:: max(1, len(order) // 12)]
    return path if len(path) >= 2 else np.repeat(pts[order[:1]], 2, axis=0)


def simulate_lasso(gt: np.ndarray, rng: np.random.Generator, n: int = 16) -> np.ndarray:
    """``(n, 2)`` ``(x, y)`` polygon around the object: grown boundary, jittered vertices."""
    d = eq_diameter(gt)
    grow = max(1, round(rng.uniform(0.01, 0.08) * d))
    region = ndimage.binary_dilation(gt, iterations=grow)
    contour = max(find_contours(np.pad(region, 1).astype(float), 0.5), key=len) - 1
    idx = np.linspace(0, len(contour), n, endpoint=False).astype(int)
    poly = contour[idx][:, ::-1] + rng.normal(0, 0.03 * d, (n, 2))
    h, w = gt.shape
    return np.clip(poly, [0, 0], [w - 1, h - 1])


def simulate_start_mask(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The object shifted and eroded or dilated: an imperfect existing mask."""
    d = eq_diameter(gt)
    shift = rng.uniform(-0.15, 0.15, 2) * d
    out = ndimage.shift(gt.astype(float), shift, order=0) > 0.5
    r = round(rng.uniform(0, 0.08) * d)
    if r:
        op = ndimage.binary_erosion if rng.random() < 0.5 else ndimage.binary_dilation
        grown = op(out, iterations=r)
        out = grown if grown.any() else out
    return out if out.any() else gt.copy()


def decode_seq(pred: SamPredictor, emb, points, mask_input=None):
    """Decode clicks one at a time, feeding each result's logits to the next (as a session)."""
    out, logits = None, mask_input
    for k in range(1, len(points) + 1):
        out = pred.predict(emb, Prompts(tuple(points[:k])), mask_input=logits)
        logits = out.low_res_logits
    return out


def scribble_methods(orig, points, emb, gt, path) -> dict[str, float]:
    """Dice of every scribble conversion."""
    res = {}
    for k in KS:
        pts = sc.scribble_points(path, True, k)
        out = decode_seq(points, emb, pts)
        res[f"scribble_seq_{k}"] = ck.dice(out.mask(), gt)
        # the product's route (refine.decode_prompts): then every point enforced model-free
        res[f"scribble_enforced_{k}"] = ck.dice(refine_with_clicks(out.prob, out.mask(), pts), gt)
        res[f"scribble_once_{k}"] = ck.dice(points.predict(emb, Prompts(pts)).mask(), gt)
    return res


def lasso_methods(orig, points, emb, gt, poly) -> dict[str, float]:
    """Dice of every lasso conversion."""
    region = sc.polygon_mask(poly, gt.shape)
    box = Box.from_mask(region)
    boxed = orig.predict(emb, Prompts(box=box)).mask()
    low = emb.frame.mask_to_model(region, 4 * emb.features.shape[-1])
    with_mask = orig.predict(emb, Prompts(box=box), mask_input=low).mask()
    return {
        "lasso_fill": ck.dice(region, gt),
        "lasso_box": ck.dice(boxed, gt),
        "lasso_box_clip": ck.dice(sc.clip_to_lasso(boxed, region), gt),
        "lasso_box_mask": ck.dice(with_mask, gt),
        "lasso_box_mask_clip": ck.dice(sc.clip_to_lasso(with_mask, region), gt),
    }


def start_mask_methods(orig, points, emb, gt, start) -> dict[str, list[float]]:
    """Dice after 0..START_CLICKS corrective clicks for every start-mask refinement."""
    prob_box = orig.predict(emb, Prompts(box=Box.from_mask(start))).prob
    low = emb.frame.mask_to_model(start, 4 * emb.features.shape[-1])
    res = {}
    for name, prob in (
        ("mask_modelfree", start.astype(np.float32)),
        ("mask_modelfree_box", prob_box),
    ):
        mask, dices = start.copy(), [ck.dice(start, gt)]
        for _ in range(START_CLICKS):
            if (click := ck.error_click(gt, mask)) is not None:
                mask = refine_with_click(prob, mask, click)
            dices.append(ck.dice(mask, gt))
        res[name] = dices
    mask, dices, clicks = start.copy(), [ck.dice(start, gt)], []
    for _ in range(START_CLICKS):
        if (click := ck.error_click(gt, mask)) is not None:
            clicks.append(click)
            mask = decode_seq(points, emb, clicks, low).mask()
        dices.append(ck.dice(mask, gt))
    res["mask_decoder"] = dices
    return res


def run(args: argparse.Namespace) -> dict:
    """Evaluate every method on every target; returns the JSON-ready summary."""
    dev = args.device
    orig = SamPredictor(load_model("litemedsam", checkpoint=args.base_checkpoint, device=dev))
    points = SamPredictor(trained_model(args.points_weights, args.base_checkpoint, dev))
    groups = [g for g in args.groups.split(",") if g]
    targets = load_targets(args.limit, np.random.default_rng(0), groups, orig)
    rng = np.random.default_rng(args.seed)
    per: dict[str, dict[str, list]] = {}
    t0 = time.perf_counter()
    for group, emb, gt, first in targets:
        if group.endswith("_parenchyma"):
            continue
        row: dict = {
            "click": ck.dice(points.predict(emb, Prompts((first,))).mask(), gt),
            "box": ck.dice(orig.predict(emb, Prompts(box=Box.from_mask(gt))).mask(), gt),
        }
        row |= scribble_methods(orig, points, emb, gt, simulate_scribble(gt, rng))
        row |= lasso_methods(orig, points, emb, gt, simulate_lasso(gt, rng))
        row |= start_mask_methods(orig, points, emb, gt, simulate_start_mask(gt, rng))
        for k, v in row.items():
            per.setdefault(group, {}).setdefault(k, []).append(v)
    summary: dict = {"groups": {}, "all": {}}
    pooled: dict[str, list] = {}
    for group, rows in per.items():
        summary["groups"][group] = {"n": len(rows["box"])}
        for k, v in rows.items():
            summary["groups"][group][k] = _mean(v)
            pooled.setdefault(k, []).extend(v)
    summary["all"] = {"n": len(pooled.get("box", []))} | {k: _mean(v) for k, v in pooled.items()}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["points_weights"] = str(args.points_weights)
    summary["seed"] = args.seed
    return summary


def _mean(values: list) -> float | list[float]:
    arr = np.asarray(values, dtype=float)
    mean = arr.mean(axis=0)
    return round(float(mean), 4) if mean.ndim == 0 else [round(float(m), 4) for m in mean]


def main(argv: list[str] | None = None) -> None:
    """Parse options, run, print JSON (and write it to ``--out`` when given)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points-weights", type=Path, default=WEIGHTS_DIR / "litemedsam_points.pt")
    p.add_argument("--seed", type=int, default=0)
    add_target_arguments(p)
    run_and_print(run, p.parse_args(argv))


if __name__ == "__main__":
    main()
