"""Adapters across subjects: train on k slices of one subject, apply to another; prints JSON.

Targets: the training corpus's ``cross-subject`` pairs (:func:`fmseg.training.heldout.
cross_subject_targets`, loaded through ``bench_incontext.targets_for``): a structure of a
support subject (training) and the same structure in another, query subject (test). Brain
pairs are DK label maps with a fixed synthetic contrast, the CT pair is TotalSegmentator CT.

Per target, on the query's slice axis:

* training: ``k`` slices spread evenly over the support subject's slices holding the structure;
* ``same``: up to ``--test`` other slices of the support subject (never trained on);
* ``cross``: up to ``--test`` slices of the query subject holding the structure.

Box-head methods get the ground-truth box (+3 px), auto-head (prompt-free) methods nothing;
Dice is per slice in slice pixels, averaged, on slices holding the structure. Baseline:
zero-shot LiteMedSAM with the same boxes. Every method trains at k = ``--k`` within
``--time-limit`` seconds (the CLI's default budget); the best ``--curve-methods`` are rerun
at every k of ``--shots``. Dice against training seconds comes from snapshots taken during
the k = ``--k`` runs, with the clock paused while a snapshot is scored. Embeddings are
computed once per slice and shared by every run (their time is reported apart). Results are
written after every run, so a partial run still reports.

    nice -n 10 python benchmarks/bench_adapters_cross.py \
        --out benchmarks/results/adapters_cross.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from bench_adapters import evaluate
from bench_incontext import targets_for

from fmseg.adapters import trainer as T
from fmseg.adapters.api import build_adapted
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.data import Annotation, slice_samples
from fmseg.adapters.feeders import SliceFeeder
from fmseg.adapters.trainer import TrainSettings, TrainStep, train_iter
from fmseg.progress import drain

METHODS = (
    ("decoder", "box"),
    ("bitfit", "box"),
    ("norm-affine", "box"),
    ("lora", "box"),
    ("arena", "box"),
    ("linear-probe", "auto"),
    ("spatial-adapter", "auto"),
)
TARGETS = ("ts-ct->ts-dicom/ts:liver", "dk-10021->dk-9861/dk:l_precuneus")
SNAPSHOTS = (5.0, 15.0, 30.0, 60.0)


def holding(labels: np.ndarray, axis: int, min_px: int) -> list[int]:
    """Slices along ``axis`` with at least ``min_px`` structure pixels."""
    counts = (labels > 0).sum(axis=tuple(a for a in range(3) if a != axis))
    return [int(i) for i in np.nonzero(counts >= min_px)[0]]


def evenly(pool: list[int], k: int) -> list[int]:
    """``k`` slices spread evenly over ``pool`` (all of it when shorter)."""
    if k >= len(pool):
        return list(pool)
    pos = np.linspace(0, len(pool) - 1, k + 2)[1:-1]
    return sorted({pool[int(round(p))] for p in pos})


class PausableClock:
    """``time.perf_counter`` minus the time spent scoring snapshots."""

    def __init__(self) -> None:
        self.paused = 0.0

    def __call__(self) -> float:
        """Seconds, less the paused ones."""
        return time.perf_counter() - self.paused


def score(model, data: dict, part: str, cache) -> float:
    """Mean Dice (4 decimals) on the ``part`` (``"same"`` / ``"cross"``) test samples."""
    samples, truths = data[part]
    return round(evaluate(model, samples, cache, truths), 4)


def prepare(target: dict, ks: list[int], n_test: int, min_px: int) -> dict:
    """Training pool, same-subject and cross-subject test samples of one target."""
    axis = target["axis"]
    s_img, s_lab = target["support_image"], target["support_labels"]
    q_img, q_lab = target["image"], target["labels"]
    pool = holding(s_lab, axis, min_px)
    train_all = sorted(set().union(*(evenly(pool, k) for k in ks)))
    rest = [i for i in pool if i not in train_all]
    same = evenly(rest, n_test)
    cross = evenly(holding(q_lab, axis, min_px), n_test)

    def samples(img, lab, idx, window):
        return slice_samples([Annotation(img, lab, 1, axis, tuple(idx))], 256, window=window)

    train = dict(
        zip(train_all, samples(s_img, s_lab, train_all, target["support_window"]), strict=True)
    )
    return {
        "axis": axis,
        "pool": pool,
        "train": train,
        "same": (
            samples(s_img, s_lab, same, target["support_window"]),
            [np.take(s_lab, i, axis) > 0 for i in same],
            same,
        ),
        "cross": (
            samples(q_img, q_lab, cross, target["window"]),
            [np.take(q_lab, i, axis) > 0 for i in cross],
            cross,
        ),
    }


def train_one(method, head, data, k, cache, args, snapshots=()) -> dict:
    """Train one adapter; Dice on both test sets (and at each snapshot second)."""
    samples = [data["train"][i] for i in evenly(data["pool"], k)]
    torch.manual_seed(0)
    method, _, l1 = method.partition("@")  # "arena@30": ARENA with penalty 30
    cfg = AdapterConfig(method=method, head=head, arena_l1=float(l1 or args.arena_l1))
    model = build_adapted("litemedsam", cfg)
    settings = TrainSettings(steps=args.steps, eval_every=5, patience=4, time_limit=args.time_limit)
    feeder = SliceFeeder(model, samples, settings.val_fraction, True, 0, cache, disk_cache=False)
    clock = PausableClock()
    T.clock = clock
    curve, todo = [], list(snapshots)
    start = clock()
    work = train_iter(model, feeder, settings)
    try:
        while True:
            step = next(work)
            if isinstance(step, TrainStep) and todo and clock() - start >= todo[0]:
                t0 = time.perf_counter()
                while todo and clock() - start >= todo[0]:
                    todo.pop(0)
                curve.append(
                    {
                        "s": round(clock() - start, 1),
                        "step": step.done,
                        "cross": score(model, data, "cross", cache),
                    }
                )
                clock.paused += time.perf_counter() - t0
    except StopIteration as stop:
        res = stop.value
    finally:
        T.clock = time.perf_counter
    return {
        "method": method,
        "head": head,
        "arena_l1": cfg.arena_l1 if method == "arena" else None,
        "k": len(samples),
        "same": score(model, data, "same", cache),
        "cross": score(model, data, "cross", cache),
        "train_s": round(res.wall_s, 1),
        "steps": res.steps_run,
        "stopped": res.stopped,
        "best_val_dice": res.best_val_dice,
        "trainable": sum(model.trainable.values()),
        "arena_ranks": res.ranks,
        "seconds_curve": curve,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument(
        "--methods",
        default=",".join(f"{m}:{h}" for m, h in METHODS),
        help="METHOD:HEAD,...; arena@L1:box sets ARENA's penalty",
    )
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--shots", default="1,3,10")
    p.add_argument("--curve-methods", type=int, default=1, help="best methods rerun per k")
    p.add_argument("--time-limit", type=float, default=60.0)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--test", type=int, default=12, help="test slices per set")
    p.add_argument("--min-px", type=int, default=50)
    p.add_argument("--arena-l1", type=float, default=AdapterConfig.arena_l1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [tuple(m.split(":")) for m in args.methods.split(",")]
    shots = [int(k) for k in args.shots.split(",") if k]
    wanted = args.targets.split(",")
    targets = [t for t in targets_for(["cross-subject"]) if t["name"] in wanted]
    doc = {
        "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_avg_at_start": os.getloadavg(),
        "torch_threads": args.threads,
        "time_limit_s": args.time_limit,
        "targets": [],
    }

    def write() -> None:
        if args.out:
            args.out.write_text(json.dumps(doc, indent=1) + "\n")

    for target in targets:
        data = prepare(target, [args.k, *shots], args.test, args.min_px)
        cache: dict[int, torch.Tensor] = {}
        frozen = build_adapted("litemedsam", AdapterConfig(method="decoder"))
        every = [*data["train"].values(), *data["same"][0], *data["cross"][0]]
        t0 = time.perf_counter()
        # Content-hash disk cache: a later run on the same slices does not embed them again.
        drain(SliceFeeder(frozen, every, 0.0, False, 0, cache, disk_cache=True).prepare())
        row = {
            "name": target["name"],
            "axis": data["axis"],
            "same_slices": data["same"][2],
            "cross_slices": data["cross"][2],
            "embed_s_per_slice": round((time.perf_counter() - t0) / len(cache), 3),
            "zero_shot_box": {
                "same": score(frozen, data, "same", cache),
                "cross": score(frozen, data, "cross", cache),
            },
            "runs": [],
        }
        doc["targets"].append(row)
        print(json.dumps({k: row[k] for k in ("name", "zero_shot_box", "embed_s_per_slice")}))
        for method, head in methods:
            run = train_one(method, head, data, args.k, cache, args, SNAPSHOTS)
            row["runs"].append(run)
            print(json.dumps(run), flush=True)
            write()
        best = sorted(row["runs"], key=lambda r: -r["cross"])[: args.curve_methods]
        for r in best:
            for k in shots:
                run = train_one(r["method"], r["head"], data, k, cache, args)
                row["runs"].append(run)
                print(json.dumps(run), flush=True)
                write()
    doc["load_avg_at_end"] = os.getloadavg()
    write()
    return doc


if __name__ == "__main__":
    main()
