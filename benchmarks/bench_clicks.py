"""Benchmark click prompts on held-out slices; prints JSON.

Held-out targets (see :mod:`fmseg.training.embed_cache`): LiTS-117 axial slices ``z >= 64``
(liver; tumour components >= 20 px) and Colin27 axial slices with held-out AAL structures.
Embeddings come from the cache (``python -m fmseg.training.embed_cache --split eval``).

Protocols, Dice at probability 0.5 in slice pixels, mean over targets:

* ``clicks``: 1 positive click at the object's centre, then corrective clicks (each at the centre
  of the largest error region), previous logits fed back as mask input; entry ``i`` is after
  ``i + 1`` clicks.
* ``box``: the tight ground-truth box, then 0..5 corrective clicks added to the box prompt;
  entry ``i`` is after ``i`` clicks.

Groups (``--groups``): ``liver``, ``tumour``, ``aal`` (the legacy held-out slices above,
``liver_parenchyma`` comes with ``liver``) and the corpus's held-out split,
``heldout-subjects`` and ``heldout-structures`` (``click_targets.py``: 4 slices per 3D target,
the largest component on each).

Methods: ``original`` (LiteMedSAM), ``trained`` (litemedsam-points overlay, or ``--weights``),
``modelfree`` (the original's prediction from the box, or from the first click, edited by
:func:`fmseg.training.clicks.refine_with_click` for every further click) and
``modelfree_trained`` (the same on the trained model's prediction). Usage::

    PYTHONPATH=core python benchmarks/bench_clicks.py [--weights PATH] [--limit N] \
        [--groups liver,tumour,aal,heldout-subjects,heldout-structures]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fmseg.interactive.predictor import SamPredictor, SliceEmbedding
from fmseg.interactive.prompts import Box, Prompts
from fmseg.interactive.refine import refine_with_clicks
from fmseg.registry import WEIGHTS_DIR, load_model
from fmseg.training import clicks as ck
from fmseg.training.embed_cache import evaluation_keys, load_cached, slice_targets
from fmseg.weights import WeightsSource, apply_state_dict, load_state_dict

try:
    from click_targets import CORPUS_GROUPS, corpus_click_targets
except ImportError:  # imported as benchmarks.bench_clicks
    from benchmarks.click_targets import CORPUS_GROUPS, corpus_click_targets

LEGACY_GROUPS = ("liver", "tumour", "aal")

BASE = {
    "original": "original",
    "trained": "trained",
    "modelfree": "original",
    "modelfree_trained": "trained",
    "consistent_trained": "trained",
}


class Timer:
    """Accumulates decode times."""

    def __init__(self) -> None:
        self.total, self.n = 0.0, 0

    def run(self, predictor: SamPredictor, *args, **kwargs):
        """Time one ``predictor.predict`` call."""
        t = time.perf_counter()
        out = predictor.predict(*args, **kwargs)
        self.total += time.perf_counter() - t
        self.n += 1
        return out

    @property
    def ms(self) -> float:
        """Mean milliseconds per decode."""
        return round(1000 * self.total / max(self.n, 1), 1)


def click_session(pred, timer, emb, gt, n_clicks, first, box=None, mask_input=True) -> list[float]:
    """Dice after each prompt of a simulated session (box first when given)."""
    prompts = Prompts(box=box) if box is not None else Prompts((first,))
    out = timer.run(pred, emb, prompts)
    dices = [ck.dice(out.mask(), gt)]
    for _ in range(n_clicks):
        click = ck.error_click(gt, out.mask())
        if click is not None:
            prompts = prompts.with_point(click)
            out = timer.run(pred, emb, prompts, out.low_res_logits if mask_input else None)
        dices.append(ck.dice(out.mask(), gt))
    return dices


def consistent_session(pred, timer, emb, gt, n_clicks, first, box=None) -> list[float]:
    """Decoder re-run on every click, then every click so far enforced model-free.

    After each decode the clicks (in order) are applied with
    :func:`fmseg.training.clicks.refine_with_click` to the decoder's mask and probability, so
    a click the decoder ignored still changes the mask; clicks it obeyed change nothing.
    """
    prompts = Prompts(box=box) if box is not None else Prompts((first,))
    out = timer.run(pred, emb, prompts)
    mask = out.mask()
    dices = [ck.dice(mask, gt)]
    for _ in range(n_clicks):
        click = ck.error_click(gt, mask)
        if click is not None:
            prompts = prompts.with_point(click)
            out = timer.run(pred, emb, prompts, out.low_res_logits)
            mask = refine_with_clicks(out.prob, out.mask(), prompts.points)
        dices.append(ck.dice(mask, gt))
    return dices


def modelfree_session(prob: np.ndarray, gt: np.ndarray, n_clicks: int, timer: Timer) -> list[float]:
    """Dice of a prediction edited by ``n_clicks`` model-free corrective clicks (timed)."""
    mask = prob > 0.5
    dices = [ck.dice(mask, gt)]
    for _ in range(n_clicks):
        click = ck.error_click(gt, mask)
        if click is not None:
            t = time.perf_counter()
            mask = ck.refine_with_click(prob, mask, click)
            timer.total += time.perf_counter() - t
            timer.n += 1
        dices.append(ck.dice(mask, gt))
    return dices


def load_targets(
    limit: int | None, rng: np.random.Generator, groups=LEGACY_GROUPS, pred=None
) -> list[tuple]:
    """``(group, SliceEmbedding, gt, first click)`` of every held-out target (``limit`` per group).

    Group ``liver_parenchyma`` repeats the liver targets with the first click at the centre of
    the largest liver-parenchyma region (label 1) instead of the centre of liver + tumour, which
    often lies on a tumour (clicks protocol only).
    """
    out: dict[str, list] = {}
    dev = pred.device if pred is not None else "cpu"
    for key in evaluation_keys() if set(groups) & set(LEGACY_GROUPS) else []:
        cs = load_cached(key)
        emb = SliceEmbedding(cs.features.float().to(dev), cs.frame)
        for kind, mask in slice_targets(key, cs.label, heldout=True):
            if kind not in groups:
                continue
            out.setdefault(kind, []).append((kind, emb, mask, ck.first_click(mask)))
            if kind == "liver":
                first = ck.first_click(ck.largest_component(cs.label == 1))
                out.setdefault("liver_parenchyma", []).append(
                    (kind + "_parenchyma", emb, mask, first)
                )
    for row in corpus_click_targets([g for g in groups if g in CORPUS_GROUPS], pred):
        out.setdefault(row[0], []).append(row)
    rows = []
    for items in out.values():
        if limit and len(items) > limit:
            items = [items[i] for i in sorted(rng.choice(len(items), limit, replace=False))]
        rows += items
    return rows


def trained_model(weights: Path, base=None, device="cpu"):
    """LiteMedSAM with the overlay at ``weights`` applied."""
    model = load_model("litemedsam", checkpoint=base, device=device)
    state = load_state_dict(WeightsSource("file", str(weights), key="model"))
    apply_state_dict(model, state, strict=False, what="overlay")
    return model


def summarise(results: dict) -> dict:
    """Means per method, group and protocol, plus whether every click raised the mean."""
    out = {}
    for method, groups in results.items():
        out[method] = {}
        for group, protos in groups.items():
            means = {
                p: [round(float(v), 4) for v in np.mean(np.array(d), axis=0)]
                for p, d in protos.items()
            }
            if "box" in means:
                means["box_monotone"] = bool(np.all(np.diff(means["box"]) > 0))
            out[method][group] = means
    return out


def sessions(method: str, pred: SamPredictor, timer: Timer, emb, gt, first, box: bool, args):
    """Dice lists of one target under the clicks (and, if ``box``, the box) protocol."""
    feed, n = not args.no_mask_input, args.clicks
    out = {}
    if method.startswith("modelfree"):
        out["clicks"] = modelfree_session(
            pred.predict(emb, Prompts((first,))).prob, gt, n - 1, timer
        )
        if box:
            prob = pred.predict(emb, Prompts(box=Box.from_mask(gt))).prob
            out["box"] = modelfree_session(prob, gt, n, timer)
        return out
    if method.startswith("consistent"):
        out["clicks"] = consistent_session(pred, timer, emb, gt, n - 1, first)
        if box:
            out["box"] = consistent_session(pred, timer, emb, gt, n, first, Box.from_mask(gt))
        return out
    out["clicks"] = click_session(pred, timer, emb, gt, n - 1, first, mask_input=feed)
    if box:
        out["box"] = click_session(pred, timer, emb, gt, n, first, Box.from_mask(gt), feed)
    return out


def run(args: argparse.Namespace) -> dict:
    """Evaluate all methods; returns the JSON-ready summary."""
    methods = args.methods.split(",")
    base, dev = args.base_checkpoint, args.device
    predictors = {}
    if any(BASE[m] == "original" for m in methods):
        predictors["original"] = SamPredictor(load_model("litemedsam", checkpoint=base, device=dev))
    if any(BASE[m] == "trained" for m in methods):
        predictors["trained"] = SamPredictor(trained_model(args.weights, base, dev))
    groups = args.groups.split(",")
    targets = load_targets(
        args.limit, np.random.default_rng(0), groups, next(iter(predictors.values()))
    )
    results: dict = {m: {} for m in methods}
    timers = {m: Timer() for m in methods}
    for group, emb, gt, first in targets:
        for m in methods:
            box = group != "liver_parenchyma"
            res = sessions(m, predictors[BASE[m]], timers[m], emb, gt, first, box, args)
            for proto, dices in res.items():
                results[m].setdefault(group, {}).setdefault(proto, []).append(dices)
    summary = summarise(results)
    summary["n_targets"] = {g: sum(t[0] == g for t in targets) for g in {t[0] for t in targets}}
    summary["decode_ms"] = {m: t.ms for m, t in timers.items() if t.n}
    summary["decode_ms_note"] = "modelfree*: per refine_with_click call (no decode)"
    summary["weights"] = str(args.weights) if "trained" in predictors else None
    return summary


def main(argv: list[str] | None = None) -> None:
    """Parse options, run, print JSON (and write it to ``--out`` when given)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR / "litemedsam_points.pt")
    p.add_argument("--methods", default=",".join(BASE), help="comma-separated")
    p.add_argument("--clicks", type=int, default=5, help="corrective clicks after the box")
    p.add_argument("--no-mask-input", action="store_true", help="do not feed logits back")
    add_target_arguments(p)
    run_and_print(run, p.parse_args(argv))


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with ``bench_scribbles.py``: targets, LiteMedSAM, threads, output."""
    p.add_argument("--groups", default=",".join(LEGACY_GROUPS), help="comma-separated")
    p.add_argument("--limit", type=int, default=None, help="targets per group at most")
    p.add_argument("--base-checkpoint", type=Path, default=None, help="LiteMedSAM tensors")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)


def run_and_print(run_fn, args: argparse.Namespace) -> None:
    """Set the threads, run, print the JSON summary (and write it to ``--out`` when given)."""
    torch.set_num_threads(args.threads)
    text = json.dumps(run_fn(args), indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
