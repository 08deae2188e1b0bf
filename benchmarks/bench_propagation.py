"""Propagation accuracy and speed: one box on one slice -> a 3D object; prints JSON.

Part ``sample`` (the 64-slice LiTS-117 CT shipped with the plugin, liver = labels 1 + 2, window
-160 240, axial axis 2, box on the middle slice), all in one run and one process:

* accuracy: volume Dice of the README's former whole-slice box (``0 0 124 127``) and of a box
  drawn tightly around the liver (the ground truth's bounding box on that slice), each with the
  previous single-axis propagation and with multi-axis propagation + fusion
  (:mod:`fmseg.interactive.fuse`) for every axis set and rule asked for;
* speed once embeddings exist: seconds per propagation (median of ``--repeats``), box -> mask
  and click -> mask latency on an embedded slice (median of ``--latency-repeats``), the same
  from the disk cache alone (fresh in-memory cache), and the encoder's seconds per slice when
  this run had to compute embeddings (``Prefetcher``, nearest the middle slice first).

Part ``corpus`` (``--corpus``): stopping rules (:class:`PropagationSettings`) swept on
training-split structures of the corpus (never held-out subjects or concepts), the best mean
Dice chosen there, then both the current defaults and the chosen rules scored on the held-out
targets (``fmseg.training.heldout``, at most ``--heldout`` of them) and LiTS-117's liver.
Each target is prompted by the tight box of its largest slice along its benchmark axis.

Embeddings are kept by content hash in ``--cache`` (fp16), so reruns only decode.

Usage::

    PYTHONPATH=core nice -n 10 python benchmarks/bench_propagation.py [--corpus] [--out F]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from fmseg import Box, Session, load_volume
from fmseg.interactive.cache import EmbeddingCache
from fmseg.interactive.fuse import fuse_masks, propagate_axes_iter, seed_slice
from fmseg.interactive.prefetch import Prefetcher
from fmseg.interactive.propagation import PropagationSettings
from fmseg.metrics import dice
from fmseg.progress import drain

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "napari_fmseg" / "data"
WINDOW = (-160.0, 240.0)
AXIS = 2
OLD_README_BOX = (0, 0, 124, 127)  # --box A0 B0 A1 B1 (axis-0, axis-1 voxels) as it was


def cli_box(a0: float, b0: float, a1: float, b1: float) -> Box:
    """The slice box of ``fmseg segment --box A0 B0 A1 B1`` (x = column = second axis)."""
    return Box(b0, a0, b1, a1)


def tight_box(mask2d: np.ndarray) -> tuple[int, int, int, int]:
    """``(A0, B0, A1, B1)`` bounding box of a 2D mask in CLI order (rows = first axis)."""
    rows, cols = np.nonzero(mask2d)
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


def run_once(session, axis, index, box, axes, rule, settings=None):
    """Prompt ``box`` on the slice, propagate along ``axes``; (mask, seconds, result)."""
    session.reset_object()
    session.set_box(axis, index, box)
    t0 = time.perf_counter()
    result = drain(propagate_axes_iter(session, axis, index, axes, settings, rule, True))
    return session.mask.copy(), time.perf_counter() - t0, result


def embed(session: Session, axes, index: int) -> dict:
    """Embed every slice of ``axes`` (nearest ``index`` first); encoder seconds per slice."""
    pre = Prefetcher(session, axes[0], index, axes)
    t0 = time.perf_counter()
    n = drain(pre.run_iter())
    wall = time.perf_counter() - t0
    return {
        "computed": n,
        "seconds": round(wall, 1),
        "s_per_slice": round(wall / n, 3) if n else None,
    }


def latency(session: Session, axis: int, index: int, box: Box, repeats: int) -> dict:
    """Median seconds of box -> mask and click -> mask on an embedded slice."""
    rng = np.random.default_rng(0)
    box_t, click_t = [], []
    for _ in range(repeats):
        d = rng.integers(-2, 3, 4)
        b = Box(box.x0 + d[0], box.y0 + d[1], box.x1 + d[2], box.y1 + d[3])
        session.reset_object()
        t0 = time.perf_counter()
        session.set_box(axis, index, b)
        box_t.append(time.perf_counter() - t0)
        session.reset_object()
        t0 = time.perf_counter()
        session.add_point(axis, index, (box.x0 + box.x1) / 2 + d[0], (box.y0 + box.y1) / 2 + d[1])
        click_t.append(time.perf_counter() - t0)
    return {
        "box_to_mask_s": round(statistics.median(box_t), 4),
        "click_to_mask_s": round(statistics.median(click_t), 4),
        "n": repeats,
    }


def sample_part(args) -> dict:
    vol = load_volume(DATA / "sample_ct.nii.gz")
    liver = load_volume(DATA / "sample_ct_labels.nii.gz").array > 0
    index = vol.array.shape[AXIS] // 2
    axes_sets = [tuple(int(a) for a in s.split(",")) for s in args.axes]
    needed = tuple(dict.fromkeys(a for s in axes_sets for a in s))

    def new_session():
        cache = EmbeddingCache(1 << 31, args.cache)
        return Session.from_registry(
            vol.array, "litemedsam", spacing=vol.spacing, window=WINDOW, cache=cache
        )

    session = new_session()
    out: dict = {"slice": index, "axis": AXIS, "embedding": embed(session, needed, index)}
    for a in needed:  # warm the in-memory cache: "once embeddings exist"
        for i in range(session.n_slices(a)):
            session.embedding(a, i)
    boxes = {"readme_old": OLD_README_BOX, "tight": tight_box(np.take(liver, index, AXIS))}
    out["boxes"] = {k: list(v) for k, v in boxes.items()}
    if boxes["tight"] == boxes["readme_old"]:  # the liver fills this crop's field of view
        del boxes["readme_old"]
    out["slice_dice"] = {}
    runs = []
    for name, cli in boxes.items():
        box = cli_box(*cli)
        session.reset_object()
        out["slice_dice"][name] = round(
            dice(session.set_box(AXIS, index, box), np.take(liver, index, AXIS)), 4
        )
        for axes in axes_sets:
            times, res = [], None
            for _ in range(args.repeats):  # one propagation per axis; every rule fuses it
                _, sec, res = run_once(session, AXIS, index, box, axes, "vote")
                times.append(sec)
            per_axis = {str(a): round(dice(m, liver), 4) for a, m in res.masks.items()}
            for rule in args.rules if len(axes) > 1 else ["single"]:
                mask = fuse_masks(list(res.masks.values()), "or" if rule == "single" else rule)
                runs.append(
                    {
                        "box": name,
                        "axes": list(axes),
                        "rule": rule,
                        "dice": round(dice(mask, liver), 4),
                        "dice_per_axis": per_axis,
                        "voxels": int(mask.sum()),
                        "seconds": round(statistics.median(times), 2),
                        "reason": res.reason,
                    }
                )
                print(json.dumps(runs[-1]), flush=True)
    out["runs"] = runs
    out["latency_memory"] = latency(session, AXIS, index, cli_box(*boxes["tight"]), args.latency)
    disk = new_session()  # nothing in memory: every embedding comes from the disk cache
    t0 = time.perf_counter()
    disk.set_box(AXIS, index, cli_box(*boxes["tight"]))
    out["box_to_mask_from_disk_s"] = round(time.perf_counter() - t0, 4)
    return out


# -- corpus: stopping rules -----------------------------------------------------------------
def _extent(target: dict) -> int:
    """Slices along the target's axis that hold it (what one propagation embeds)."""
    axis = target["axis"]
    return int(np.any(target["labels"], axis=tuple(a for a in range(3) if a != axis)).sum())


def corpus_targets(
    n_train: int, n_heldout: int, max_slices: int = 0
) -> tuple[list[dict], list[dict]]:
    """(training-split targets, held-out targets); both empty without a corpus.

    Targets spanning more than ``max_slices`` slices are skipped (0: none are).
    """
    from fmseg.training.corpus import load_corpus
    from fmseg.training.heldout import _image, _targets, heldout_targets
    from fmseg.training.splits import held_out_concept, is_held_out_subject

    try:
        records = load_corpus(build_missing=False)
    except FileNotFoundError as err:
        print(f"no corpus: {err}", flush=True)
        return [], []
    train = []
    rng = np.random.default_rng(0)
    for rec in records:
        if is_held_out_subject(rec.subject) or rec.id.startswith(("colin27", "lits")):
            continue  # colin27 AAL and LiTS are benchmark targets elsewhere
        vals = [v for v, name in rec.names.items() if not held_out_concept(name)]
        image, window = _image(rec)
        found = _targets(rec, image, vals, "train", window)
        if found:
            train.append(found[int(rng.integers(len(found)))])
    held = heldout_targets(records)
    if max_slices:
        train = [t for t in train if _extent(t) <= max_slices]
        held = [t for t in held if _extent(t) <= max_slices]
    pick = np.random.default_rng(1)
    train = [train[i] for i in sorted(pick.permutation(len(train))[:n_train])]
    held = [held[i] for i in sorted(pick.permutation(len(held))[:n_heldout])]
    return train, held


def lits_target() -> dict:
    vol = load_volume(DATA / "sample_ct.nii.gz")
    liver = load_volume(DATA / "sample_ct_labels.nii.gz").array > 0
    return dict(name="lits117-sample/liver", group="liver", image=vol.array,
                labels=liver, axis=AXIS, window=WINDOW, spacing=vol.spacing)  # fmt: skip


def score(target: dict, settings_list, cache_dir) -> list[float]:
    """Volume Dice of one tight box on the target's largest slice, per settings."""
    truth = np.asarray(target["labels"]) > 0
    axis = target["axis"]
    session = Session.from_registry(
        np.asarray(target["image"], np.float32), "litemedsam",
        spacing=target.get("spacing"), window=target["window"],
        cache=EmbeddingCache(1 << 30, cache_dir),
    )  # fmt: skip
    index = seed_slice(truth, axis)
    box = cli_box(*tight_box(np.take(truth, index, axis)))
    return [
        round(dice(run_once(session, axis, index, box, (axis,), "vote", s)[0], truth), 4)
        for s in settings_list
    ]


def corpus_part(args) -> dict:
    train, held = corpus_targets(args.train, args.heldout, args.max_slices)
    if not train:
        return {"skipped": "no corpus"}
    base = PropagationSettings()
    margins = (0.0, 3.0, 6.0) if args.grid == "full" else (base.margin,)
    reaches = (2, 5, 10) if args.grid == "full" else (2, base.reach)
    grid = [
        replace(base, min_overlap=o, reach=r, margin=m)
        for o, r, m in itertools.product((0.3, 0.5, 0.7), reaches, margins)
    ]
    per_train = {}
    for t in train:
        per_train[t["name"]] = score(t, grid, args.cache)
        print(t["name"], max(per_train[t["name"]]), flush=True)
    means = np.mean(list(per_train.values()), axis=0)
    best = grid[int(np.argmax(means))]
    held_scores = {}
    for t in [*held, lits_target()]:
        d_base, d_best = score(t, [base, best], args.cache)
        held_scores[t["name"]] = {"group": t["group"], "defaults": d_base, "chosen": d_best}
        print(t["name"], d_base, d_best, flush=True)
    hd = [v for v in held_scores.values() if v["group"] != "liver"]
    return {
        "train_targets": list(per_train),
        "grid_mean_dice_train": [
            {**asdict(s), "mean_dice": round(float(m), 4)} for s, m in zip(grid, means, strict=True)
        ],
        "defaults": asdict(base),
        "chosen": asdict(best),
        "train_mean_defaults": round(float(means[grid.index(base)]), 4) if base in grid else None,
        "train_mean_chosen": round(float(means.max()), 4),
        "heldout": held_scores,
        "heldout_mean_defaults": round(float(np.mean([v["defaults"] for v in hd])), 4)
        if hd else None,
        "heldout_mean_chosen": round(float(np.mean([v["chosen"] for v in hd])), 4) if hd else None,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default=str(ROOT / ".cache" / "emb_propagation"))
    p.add_argument("--axes", nargs="+", default=["2", "2,0", "2,1", "2,0,1"])
    p.add_argument("--rules", nargs="+", default=["vote", "and", "or"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--latency", type=int, default=20, help="repeats of box/click -> mask")
    p.add_argument("--threads", type=int, default=1, help="torch threads (decoder)")
    p.add_argument("--corpus", action="store_true", help="also sweep stopping rules on the corpus")
    p.add_argument("--no-sample", action="store_true", help="skip the sample part")
    p.add_argument("--train", type=int, default=6, help="training-split targets for the sweep")
    p.add_argument("--heldout", type=int, default=8, help="held-out targets scored")
    p.add_argument("--max-slices", type=int, default=0, help="skip longer targets (0: none)")
    p.add_argument("--grid", choices=("full", "small"), default="full", help="27 or 6 rules")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        },
    }
    if not args.no_sample:
        result["sample"] = sample_part(args)
    if args.corpus:
        result["corpus"] = corpus_part(args)
    result["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
