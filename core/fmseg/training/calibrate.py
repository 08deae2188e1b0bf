"""Fit a Tyche checkpoint's calibration on held-out corpus episodes and store it in the file.

Never run in CI. Held-out episodes (:class:`~fmseg.training.episodes.EpisodeSampler` on the
held-out split: structures of the held-out subjects and the LiTS-117 evaluation half, 8
supports, no task augmentation) are drawn from two disjoint halves of the held-out
``(record, structure)`` pairs (alternating in sorted order):

* the *calibration half*: its even episodes fit a temperature and an isotonic map, its odd
  episodes choose between them (and no calibration) by NLL; the chosen kind is then refitted on
  the whole half;
* the *evaluation half*, the held-out AAL structures and the LiTS liver evaluation half (the
  trainer's validation episodes): ECE and NLL before and after, never used for fitting.

Every candidate's probability is calibrated against the one reference mask. ECE is reported
over all pixels (dominated by confidently right background), over a band within
:data:`BAND` pixels of the reference or the predicted mask, and for the candidates' mean.
Usage::

    python -m fmseg.training.calibrate --weights W.pt --sampler tyche-small --out W.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .. import calibration as C
from ..incontext.backends import Supports
from ..incontext.stochastic import TycheBackend
from ..registry import load_model
from .episodes import EpisodeSampler, Mix

BAND = 5  # pixels around the reference and the predicted mask
HELDOUT_MIX = Mix(real=0.5, synth=0.5, shapes=0.0, cross=0.0, merge=0.0, split=0.0, empty=0.1)


def halves(sampler: EpisodeSampler) -> tuple[EpisodeSampler, EpisodeSampler]:
    """Two samplers over alternate ``(record, structure)`` pairs (all axes of a pair together)."""
    keys = sorted({(sampler.stacks[s.stack].record.id, s.key) for s in sampler.structures})
    side = {k: i % 2 for i, k in enumerate(keys)}
    out = []
    for h in (0, 1):
        half = copy.copy(sampler)
        half.structures = [
            s for s in sampler.structures if side[(sampler.stacks[s.stack].record.id, s.key)] == h
        ]
        half._index()  # sampling tables of the kept structures
        out.append(half)
    return out[0], out[1]


def sample_episodes(backend: TycheBackend, episodes) -> tuple[np.ndarray, np.ndarray]:
    """``(E, K, H, W)`` candidate probabilities and ``(E, H, W)`` reference masks.

    Args:
        backend: An uncalibrated Tyche backend.
        episodes: ``(si (S, 1, H, W), sm, qi (1, H, W), qm)`` tensors per episode.
    """
    probs, labels = [], []
    for si, sm, qi, qm in episodes:
        sup = Supports(tuple(si[:, 0].numpy()), tuple(sm[:, 0].numpy() > 0.5))
        probs.append(backend.sample(backend.prepare(sup), qi.numpy())[:, 0])
        labels.append(qm[0].numpy() > 0.5)
    return np.stack(probs), np.stack(labels)


def band(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(E, H, W)`` pixels within :data:`BAND` of the reference or the mean's mask."""
    near = labels | (probs.mean(1) > 0.5)
    return np.stack([ndimage.binary_dilation(m, iterations=BAND) for m in near])


def scores(probs: np.ndarray, labels: np.ndarray, cal: dict | None) -> dict:
    """ECE (all pixels, band, candidates' mean), NLL and reliability of one group."""
    p = C.apply_calibration(probs, cal)
    y = np.broadcast_to(labels[:, None], p.shape)
    near = np.broadcast_to(band(probs, labels)[:, None], p.shape)
    return {
        "ece": C.expected_calibration_error(p, y),
        "ece_band": C.expected_calibration_error(p[near], y[near]),
        "ece_mean": C.expected_calibration_error(p.mean(1), labels),
        "nll": C.nll(p, y),
        "reliability": C.reliability(p, y),
        "reliability_band": C.reliability(p[near], y[near]),
    }


def fit(kind: str, probs: np.ndarray, labels: np.ndarray) -> dict | None:
    """A calibration of ``kind`` (``none``, ``temperature``, ``isotonic``) for candidates."""
    y = np.broadcast_to(labels[:, None], probs.shape)
    if kind == "temperature":
        return C.fit_temperature(C.logit(probs), y)
    if kind == "isotonic":
        return C.fit_isotonic(probs, y)
    return None


def choose(probs: np.ndarray, labels: np.ndarray) -> tuple[dict | None, dict]:
    """Fit on even episodes, choose by NLL on odd ones, refit the winner on all."""
    a, b = slice(0, None, 2), slice(1, None, 2)
    y_b = np.broadcast_to(labels[b][:, None], probs[b].shape)
    nlls = {}
    for kind in ("none", *C.KINDS):
        nlls[kind] = C.nll(C.apply_calibration(probs[b], fit(kind, probs[a], labels[a])), y_b)
    best = min(nlls, key=nlls.get)
    return fit(best, probs, labels), {"selection_nll": nlls, "chosen": best}


def write_calibration(weights: Path, out: Path, cal: dict | None) -> None:
    """Copy ``weights`` to ``out`` (atomically) with ``meta["calibration"] = cal``."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{weights} is not a {{'model', 'meta'}} checkpoint")
    state.setdefault("meta", {})["calibration"] = cal
    tmp = out.with_name(out.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out)


def groups(args: argparse.Namespace) -> dict[str, list]:
    """Episodes per group: ``calibration``, ``evaluation``, ``aal``, ``liver``."""
    from .corpus import load_corpus
    from .train_incontext import validation_set

    rng = np.random.default_rng(args.seed)
    records = load_corpus(root=args.corpus, split="heldout")
    cal, ev = halves(EpisodeSampler(records, "heldout", HELDOUT_MIX))
    out = {
        "calibration": [cal.episode(args.supports, rng) for _ in range(args.episodes)],
        "evaluation": [ev.episode(args.supports, rng) for _ in range(args.episodes)],
    }
    for name, si, sm, qi, qm in validation_set(np.random.default_rng(1234)):
        out.setdefault("liver" if name.startswith("liver") else "aal", []).append((si, sm, qi, qm))
    return out


def run(args: argparse.Namespace) -> dict:
    """Sample, fit, choose, score and write; returns the JSON report."""
    torch.set_num_threads(args.threads)
    model = load_model(args.sampler, checkpoint=args.weights, device="cpu")
    backend = TycheBackend(model, k=args.k, seed=args.seed)
    sampled = {g: sample_episodes(backend, eps) for g, eps in groups(args).items()}
    cal, choice = choose(*sampled["calibration"])
    report = {"weights": str(args.weights), "out": str(args.out), "k": args.k, **choice}
    report["calibration"] = cal
    report["groups"] = {}
    for g, (probs, labels) in sampled.items():
        before, after = scores(probs, labels, None), scores(probs, labels, cal)
        report["groups"][g] = {"episodes": len(labels), "before": before, "after": after}
    write_calibration(args.weights, args.out, cal)
    return report


def summary(report: dict) -> dict:
    """The report without reliability tables (for the terminal)."""
    out = {k: v for k, v in report.items() if k != "groups"}
    out["groups"] = {
        g: {
            "episodes": r["episodes"],
            **{
                f"{key}_{when}": round(r[when][key], 4)
                for key in ("ece", "ece_band", "ece_mean", "nll")
                for when in ("before", "after")
            },
        }
        for g, r in report["groups"].items()
    }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Calibrate a Tyche checkpoint on held-out episodes.")
    p.add_argument("--weights", type=Path, required=True, help="checkpoint to calibrate")
    p.add_argument("--sampler", default="tyche-small", choices=("tyche-small", "tyche-v1"))
    p.add_argument("--out", type=Path, required=True, help="where the calibrated copy goes")
    p.add_argument("--episodes", type=int, default=100, help="episodes per corpus half")
    p.add_argument("--supports", type=int, default=8)
    p.add_argument("--k", type=int, default=8, help="candidates per query")
    p.add_argument("--corpus", type=Path, default=None, help="corpus folder (default: cache)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="full report (with reliability)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run and print the summary as JSON (the full report goes to ``--json``)."""
    args = parse_args(argv)
    if not args.weights.is_file():
        sys.exit(f"calibrate: no checkpoint at {args.weights}")
    report = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(summary(report), indent=1))


if __name__ == "__main__":
    main()
