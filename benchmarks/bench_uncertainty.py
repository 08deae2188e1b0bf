"""Stochastic in-context segmentation on held-out real slices; prints JSON.

Targets and supports as in ``bench_incontext.py`` (interleaved protocol, 8 supports): LiTS-117
liver (axis 0, evaluation half) and the 10 held-out AAL structures (axis 2). Queries: the
non-support slices of each structure's extent where it is present (at most ``--queries`` per
structure, evenly spaced); with ``--groups`` also the corpus's held-out subjects and
structures. For each sampler (``K`` samples) and each deterministic reference (default: the
in-context default ``auto``, which also sees the interpolation of the supports, and
``incontext-small``):

* best-candidate Dice (max over samples) vs the deterministic Dice;
* GED (d = 1 - Dice) of the samples vs GED of K copies of the deterministic prediction;
* diversity (mean pairwise 1 - Dice) overall and on the most vs least boundary-dominated
  targets (top / bottom third by perimeter / area);
* entropy of the samples as an error detector: AUROC over voxels and error rate by decile;
* both maps of :data:`fmseg.uncertainty.MAPS` (disagreement between candidates, total
  uncertainty = entropy of the mean) per group: AUROC over voxels, AUROC within a band of
  ``--band`` pixels (default 10) around the reference boundary (:func:`fmseg.metrics.band_auroc`;
  errors of the mean > 0.5), and the fraction of the structure, and of its interior (farther
  than ``--band`` pixels from the boundary), where the map exceeds 0.5 bit (the symptom a user
  reported: a whole liver above 0.5 bit of entropy while the candidates barely differed);
* time of K samples of one 256x256 slice vs one deterministic prediction, and for Tyche vs one
  pass of the same network with a single candidate (median of interleaved repeats).

Usage::

    PYTHONPATH=core python benchmarks/bench_uncertainty.py --out benchmarks/results/uncertainty.json
    # quick: PYTHONPATH=core python benchmarks/bench_uncertainty.py --queries 2 --repeats 3 \
    #     --out benchmarks/results/uncertainty_maps_quick.json
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from bench_incontext import make_support, protocol_slices, targets_for
from scipy import ndimage as ndi
from torch.nn import functional as F

from fmseg import metrics as M
from fmseg import uncertainty as U
from fmseg.incontext import build_backend, build_sampler, normalise, volume_window
from fmseg.incontext.segment import binary_supports
from fmseg.incontext.stochastic import TycheBackend
from fmseg.weights import WeightsError


def boundary_ratio(mask: np.ndarray) -> float:
    """Boundary pixels / area: high for thin or small, boundary-dominated targets."""
    edge = mask & ~ndi.binary_erosion(mask)
    return float(edge.sum() / max(1, mask.sum()))


def queries_for(target: dict, n_queries: int) -> tuple[list[int], list[int]]:
    """Support slices (8, interleaved) and evenly spaced query slices with the structure."""
    sup, qry = protocol_slices(target["labels"], target["axis"], 8, "interleaved")
    present = [i for i in qry if target["labels"].take(i, target["axis"]).any()]
    pick = np.unique(np.linspace(0, len(present) - 1, min(n_queries, len(present))).round())
    return sup, [present[int(i)] for i in pick]


def _rounded(x: float) -> float | None:
    """``x`` to 4 decimals, None for nan (no pixels): JSON has no nan."""
    return None if np.isnan(x) else round(float(x), 4)


def map_scores(parts: list[dict], band: int) -> dict:
    """Scores of each map over pooled query slices: ``parts`` rows of per-slice arrays.

    Each row holds its ``group``; ``error``, ``band``, ``structure``, ``interior`` (bool
    ``(H, W)``); and one ``(H, W)`` map per kind of :data:`fmseg.uncertainty.MAPS`.
    """
    pool = {k: np.concatenate([p[k].ravel() for p in parts]) for k in parts[0] if k != "group"}
    err, near, n = pool["error"], pool["band"], int(pool["interior"].sum())
    out = {}
    for kind in U.MAPS:
        m = pool[kind]
        try:
            in_band = round(M.auroc(m[near], err[near]), 4)
        except ValueError:  # no error (or no correct pixel) near any boundary
            in_band = None
        out[kind] = {
            "auroc": round(M.auroc(m, err), 4),
            f"band_auroc_{band}px": in_band,
            "above_half_bit_structure": round(M.fraction_above(m, pool["structure"]), 4),
            "above_half_bit_interior": _rounded(M.fraction_above(m, pool["interior"])),
            "mean_bits_interior": _rounded(float(m[pool["interior"]].mean()) if n else np.nan),
        }
    out["interior_px"] = n
    out["band_errors_px"] = int(err[near].sum())
    return out


def evaluate(sampler, dets: dict, targets: list[dict], n_queries: int, band: int = 10) -> dict:
    """All metrics for one sampler against the deterministic backends ``{name: backend}``."""
    rows, ent_all, err_all, parts = [], [], [], []
    for t in targets:
        sup, qry = queries_for(t, n_queries)
        supports = binary_supports(make_support(t, sup, False), None)
        win = t["window"] if t["window"] is not None else volume_window(t["image"])
        q = normalise(np.moveaxis(t["image"], t["axis"], 0)[qry], win)
        gt = np.moveaxis(t["labels"], t["axis"], 0)[qry] > 0
        samples = sampler.sample(sampler.prepare(supports), q)  # (K, N, H, W)
        src = supports.positions[0][0] if supports.positions else None
        pos = [(src, t["axis"], i) for i in qry] if src else None
        detp = {n: d.predict(d.prepare(supports), q, pos) > 0.5 for n, d in dets.items()}
        for j in range(len(qry)):
            s = samples[:, j]
            row = {
                "group": t["group"],
                "best": M.best_candidate_dice(s, gt[j]),
                "mean_dice": M.dice(U.mean_probability(s) > 0.5, gt[j]),
                "ged": M.ged(s, gt[j]),
                "diversity": U.diversity(s),
                "ratio": boundary_ratio(gt[j]),
            }
            for name, d in detp.items():  # deterministic Dice; GED of K copies of it
                row[f"det:{name}"] = M.dice(d[j], gt[j])
                row[f"ged_det:{name}"] = M.ged(np.repeat(d[j][None], len(s), 0), gt[j])
            rows.append(row)
            error = (U.mean_probability(s) > 0.5) != gt[j]
            ent_all.append(U.entropy(s).ravel())
            err_all.append(error.ravel())
            part = {"group": t["group"], "error": error, "structure": gt[j]}
            part |= {"band": M.boundary_band(gt[j], band), "interior": M.interior(gt[j], band)}
            parts.append(part | {kind: U.uncertainty_map(s, kind) for kind in U.MAPS})
    out = summarise(rows, np.concatenate(ent_all), np.concatenate(err_all))
    out["maps"] = {"band_px": band}
    for g in _groups(rows):
        out["maps"][g] = map_scores([p for p in parts if g in ("all", p["group"])], band)
    return out


def _groups(rows: list[dict]) -> list[str]:
    """The groups present, in order of appearance, then ``all``."""
    return list(dict.fromkeys(r["group"] for r in rows)) + ["all"]


def summarise(rows: list[dict], ent: np.ndarray, err: np.ndarray) -> dict:
    """Means per group, diversity by boundary tercile, entropy AUROC."""
    out: dict = {}
    for g in _groups(rows):
        sel = [r for r in rows if g == "all" or r["group"] == g]
        out[g] = {k: round(float(np.mean([r[k] for r in sel])), 4) for k in sel[0] if k != "group"}
        out[g]["n"] = len(sel)
    ratios = np.array([r["ratio"] for r in rows])
    lo, hi = np.quantile(ratios, (1 / 3, 2 / 3))
    div = np.array([r["diversity"] for r in rows])
    out["diversity_boundary_dominated"] = round(float(div[ratios >= hi].mean()), 4)
    out["diversity_compact"] = round(float(div[ratios <= lo].mean()), 4)
    out["entropy_auroc"] = round(M.auroc(ent, err), 4)
    out["error_rate_by_entropy_decile"] = [round(x, 4) for x in M.error_rate_by_decile(ent, err)]
    return out


def timing(sampler, dets: dict, target: dict, repeats: int) -> dict:
    """Seconds for K samples vs one prediction of each deterministic backend, one 256x256 slice."""
    sup, qry = queries_for(target, 1)
    supports = binary_supports(make_support(target, sup, False), None)
    q = normalise(np.moveaxis(target["image"], target["axis"], 0)[qry[:1]], target["window"])
    q = F.interpolate(torch.from_numpy(q)[None], (256, 256), mode="bilinear")[0].numpy()
    st = sampler.prepare(supports)
    pos = [(supports.positions[0][0], target["axis"], qry[0])] if supports.positions else None
    runs = {"samples_s": lambda: sampler.sample(st, q)}
    for name, det in dets.items():
        runs[f"deterministic_s:{name}"] = partial(det.predict, det.prepare(supports), q, pos)
    if isinstance(sampler, TycheBackend):  # one pass of the same network with one candidate
        runs["one_candidate_s"] = lambda: sampler.sample(st, q, k=1)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):  # interleaved, so background load hits every variant alike
        for key, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    out = {k: round(float(np.median(v)), 4) for k, v in times.items()}
    for name in dets:
        out[f"ratio:{name}"] = round(out["samples_s"] / out[f"deterministic_s:{name}"], 2)
    if "one_candidate_s" in out:
        out["ratio_to_one_candidate"] = round(out["samples_s"] / out["one_candidate_s"], 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run and print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samplers", default="tyche-small,incontext-small+tta")
    p.add_argument("--deterministic", default="auto,incontext-small", help="references")
    p.add_argument("--groups", default="liver,aal,heldout-subjects,heldout-structures")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--queries", type=int, default=12, help="query slices per structure")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--band", type=int, default=10, help="boundary band (pixels) for AUROC")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME@TAG=PATH",
        help="also benchmark sampler NAME with other weights, reported as NAME@TAG",
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    groups = args.groups.split(",")
    targets = [t for t in targets_for(groups) if t["group"] in groups]
    dets = {n: build_backend(n, device="cpu") for n in args.deterministic.split(",")}
    result: dict = {"k": args.k, "deterministic": list(dets), "queries": args.queries}
    result["groups"] = groups
    result["samplers"] = {}
    extra = dict(c.split("=", 1) for c in args.checkpoint)
    for name in args.samplers.split(",") + list(extra):
        try:
            base = name.split("@", 1)[0]
            sampler = build_sampler(base, k=args.k, device="cpu", checkpoint=extra.get(name))
        except (WeightsError, KeyError) as err:
            result["samplers"][name] = {"skipped": str(err)}
            continue
        t0 = time.perf_counter()
        res = evaluate(sampler, dets, targets, args.queries, args.band)
        res["time"] = timing(sampler, dets, targets[0], args.repeats)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        result["samplers"][name] = res
        print(name, json.dumps(res), flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
