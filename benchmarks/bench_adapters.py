"""Few-shot adapters on LiteMedSAM (2D): held-out Dice per method x shots, params, wall time.

Task: one structure on one axis of a real volume (../shared/data). Slices containing it are
split at the median index: the k training slices are spread evenly over the lower half, every
slice of the upper half is held out for testing (never trained on). Baseline: zero-shot
LiteMedSAM with the ground-truth box (+3 px). Box-head methods are tested with the same
boxes; auto-head (prompt-free) methods with none. Image embeddings are computed once per slice
and shared by every decoder-side run; the wall time reported is the training time after
caching, plus the one-off embedding time of the k training slices for that run.

    python benchmarks/bench_adapters.py --task aal:1 --out benchmarks/results/adapters.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from fmseg.adapters.api import build_adapted
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.data import Annotation, slice_samples
from fmseg.adapters.feeders import SliceFeeder
from fmseg.adapters.trainer import TrainSettings, train_iter
from fmseg.metrics import dice
from fmseg.progress import drain

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = [
    ("decoder", "box"),
    ("bitfit", "box"),
    ("norm-affine", "box"),
    ("lora", "box"),
    ("arena", "box"),
    ("linear-probe", "auto"),
    ("spatial-adapter", "auto"),
]


def load_task(task: str):
    """``aal:N`` (Colin27 T1, AAL label N, axial) or ``lits:N`` (LiTS CT label N, axis 0)."""
    name, _, value = task.partition(":")
    if name == "aal":
        img = nib.load(DATA / "colin27_ch2.nii.gz").get_fdata(dtype=np.float32)
        lab = np.asarray(nib.load(DATA / "colin27_aal.nii.gz").dataobj).astype(np.int16)
        return img, lab, int(value), 2
    img = nib.load(DATA / "lits117_ct.nii.gz").get_fdata(dtype=np.float32)
    lab = np.asarray(nib.load(DATA / "lits117_labels.nii.gz").dataobj).astype(np.int16)
    return img, lab, int(value), 0


def split(lab: np.ndarray, value: int, axis: int, min_px: int = 50):
    """Slices with the structure: lower half (training pool) and upper half (test)."""
    counts = (lab == value).sum(axis=tuple(a for a in range(3) if a != axis))
    idx = [int(i) for i in np.nonzero(counts >= min_px)[0]]
    mid = len(idx) // 2
    return idx[:mid], idx[mid:]


def evenly(pool: list[int], k: int) -> list[int]:
    """``k`` slices spread evenly over ``pool``."""
    pos = np.linspace(0, len(pool) - 1, k + 2)[1:-1] if k < len(pool) else range(len(pool))
    return sorted({pool[int(round(p))] for p in pos})


def evaluate(model, samples, cache, truths) -> float:
    """Mean per-slice Dice in slice pixels on held-out samples."""
    scores = []
    with torch.no_grad():
        for s, truth in zip(samples, truths, strict=True):
            batch = {"embedding": cache[id(s)][None]}
            if model.head_kind == "box":
                batch["box"] = s.box[None]
            logits = s.frame.logits_to_slice(model(batch))
            scores.append(dice(logits[0, 0].numpy() > 0, truth))
    return float(np.mean(scores))


def run(task: str, shots: list[int], steps: int, test_every: int) -> dict:
    img, lab, value, axis = load_task(task)
    pool, test = split(lab, value, axis)
    test = test[::test_every]
    train_sets = {k: evenly(pool, k) for k in shots}
    all_train = sorted(set().union(*train_sets.values()))
    ann = lambda sl: Annotation(img, lab, value, axis, tuple(sl))  # noqa: E731
    train_samples = dict(zip(all_train, slice_samples([ann(all_train)], 256), strict=True))
    test_samples = slice_samples([ann(test)], 256)
    truths = [np.take(lab, i, axis) == value for i in test]
    frozen = build_adapted("litemedsam", AdapterConfig(method="decoder"))
    cache: dict[int, torch.Tensor] = {}
    feeder = SliceFeeder(frozen, [*train_samples.values(), *test_samples], 0.0, False, 0, cache)
    t0 = time.perf_counter()
    drain(feeder.prepare())  # the same embedding path training uses
    embed_s = (time.perf_counter() - t0) / len(cache)
    out = {
        "task": task,
        "axis": axis,
        "train_pool": [pool[0], pool[-1]],
        "test_slices": test,
        "embed_s_per_slice": round(embed_s, 3),
        "zero_shot_box": round(evaluate(frozen, test_samples, cache, truths), 4),
        "runs": [],
    }
    print(json.dumps({k: out[k] for k in ("task", "zero_shot_box", "embed_s_per_slice")}))
    for method, head in METHODS:
        for k in shots:
            samples = [train_samples[i] for i in train_sets[k]]
            torch.manual_seed(0)
            model = build_adapted("litemedsam", AdapterConfig(method=method, head=head))
            settings = TrainSettings(steps=steps, eval_every=10, patience=4, time_limit=60)
            feeder = SliceFeeder(model, samples, settings.val_fraction, True, 0, cache)
            res = drain(train_iter(model, feeder, settings))
            row = {
                "method": method,
                "head": head,
                "k": k,
                "dice": round(evaluate(model, test_samples, cache, truths), 4),
                "trainable": sum(model.trainable.values()),
                "train_s": round(res.wall_s, 1),
                "train_plus_embed_s": round(res.wall_s + k * embed_s, 1),
                "steps": res.steps_run,
                "arena_ranks": res.ranks,
            }
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", default=None)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--test-every", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [run(t, args.shots, args.steps, args.test_every) for t in args.task or ["aal:1"]]
    summary = {
        r["task"]: {
            "zero_shot_box": r["zero_shot_box"],
            "best_5_shot": max((x for x in r["runs"] if x["k"] == 5), key=lambda x: x["dice"]),
            "median_decoder_side_train_s": statistics.median(x["train_s"] for x in r["runs"]),
        }
        for r in results
    }
    doc = {"results": results, "summary": summary, "torch_threads": args.threads}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
