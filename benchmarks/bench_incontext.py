"""Held-out in-context benchmark: Dice vs support size for every backend; prints JSON.

Targets never used for training ``incontext-small`` (see ``fmseg/weights/incontext_small.md``):

* ``liver``: LiTS-117 liver along array axis 0 (axial), evaluation half (index >= 64);
* ``aal``: the 10 held-out AAL structures on Colin27 along array axis 2 (axial);
* ``heldout-subjects`` / ``heldout-structures``: the training corpus's held-out split
  (:mod:`fmseg.training.heldout`: new subjects; structure kinds no training run has seen),
  scored on every 3rd candidate query slice. Needs the corpus
  (``python -m fmseg.training.corpus build``).

Protocols (support slices are never evaluated):

* ``interleaved``: ``n`` supports evenly spaced inside the structure's extent, queries = the
  other slices of the extent plus 2 slices beyond each end (empty targets count);
* ``split``: supports evenly spaced inside the first half of the extent, queries = the second half
  (+2 slices beyond its end): the supports come from another part of the volume.

Every 2nd candidate query slice is scored (half the run time; ``protocol_slices(step=1)``
for all).

Score: Dice over the stack of query slices, mean over structures. ``shuffled`` rows run a
backend with each support mask flipped in both axes and moved to another support image (the
structure no longer matches its image), at one support size: a network must do clearly
better with real supports.
Usage::

    PYTHONPATH=core python benchmarks/bench_incontext.py --out benchmarks/results/incontext.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch

from fmseg.incontext import SupportSet, add_slice, build_backend, segment_volume_iter
from fmseg.metrics import dice
from fmseg.progress import drain
from fmseg.training.splits import HELD_OUT_AAL
from fmseg.weights import WeightsError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SIZES = (1, 2, 4, 8, 16)
GROUPS = ("liver", "aal")
CORPUS_GROUPS = ("heldout-subjects", "heldout-structures", "cross-subject")
TITLES = {
    "liver": "LiTS-117 liver",
    "aal": "10 held-out AAL structures",
    "heldout-subjects": "corpus: held-out subjects",
    "heldout-structures": "corpus: held-out structures",
    "cross-subject": "corpus: supports from another subject",
}
CLICKS = 5


def load_targets(data: Path) -> list[dict]:
    """Volumes, label maps, axis, window and evaluation range of every target structure."""
    import nibabel as nib

    def arr(name, dtype):
        return np.asarray(nib.load(data / name).dataobj).astype(dtype)

    ct, lab = arr("lits117_ct.nii.gz", np.float32), arr("lits117_labels.nii.gz", np.int32)
    liver = (lab > 0).astype(np.int32)
    liver[:64] = 0  # evaluation half only
    out = [dict(name="liver", group="liver", image=ct, labels=liver, axis=0, window=(-160, 240))]
    t1, aal = arr("colin27_ch2.nii.gz", np.float32), arr("colin27_aal.nii.gz", np.int32)
    for v in HELD_OUT_AAL:
        out.append(
            dict(
                name=f"aal{v}",
                group="aal",
                image=t1,
                labels=(aal == v).astype(np.int32),
                axis=2,
                window=None,
            )
        )
    return out


def corpus_targets(groups: list[str]) -> list[dict]:
    """Targets of the corpus's held-out split (query step 3), or none without a corpus."""
    from fmseg.training.corpus import load_corpus
    from fmseg.training.heldout import cross_subject_targets, heldout_targets

    try:
        records = load_corpus(build_missing=False)
    except FileNotFoundError as err:
        print(f"skipping {', '.join(groups)}: {err}", flush=True)
        return []
    out = [dict(t, step=3) for t in heldout_targets(records, groups)]
    if "cross-subject" in groups:
        out += [dict(t, step=3) for t in cross_subject_targets(records)]
    return out


def protocol_slices(labels: np.ndarray, axis: int, n: int, protocol: str, step: int = 2):
    """``(support indices, query indices)`` along ``axis``; every ``step``-th query slice.

    Support positions for every ``n`` are drawn from one fixed set of up to 16 evenly spaced
    slices, and queries exclude that whole set, so the query slices are the same for every
    support size (scores are comparable along the curve).
    """
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(labels.any(axis=other))
    lo, hi = int(present.min()), int(present.max())
    mid = (lo + hi) // 2
    end = mid if protocol == "split" else hi
    pool = np.unique(np.linspace(lo, end, 18)[1:-1].round().astype(int))
    pool = np.array([i for i in pool if labels.take(i, axis).any()])
    pick = np.unique(np.linspace(0, len(pool) - 1, n + 2)[1:-1].round().astype(int))
    sup = [int(i) for i in (pool if n >= len(pool) else pool[pick])]
    if protocol == "split":
        qry = range(mid + 1, min(labels.shape[axis], hi + 3))
    else:
        qry = range(max(0, lo - 2), min(labels.shape[axis], hi + 3))
    return sup, [i for i in list(qry)[::step] if i not in set(pool.tolist())]


def make_support(target: dict, slices: list[int], shuffled: bool) -> SupportSet:
    """Support set from ``slices`` (optionally with mismatched, flipped masks)."""
    s = SupportSet()
    for i in slices:
        add_slice(s, target["image"], target["labels"], target["axis"], i, target["window"])
    if shuffled:
        masks = [np.flip(e.labels, (0, 1)) for e in s.examples]
        masks = masks[1:] + masks[:1]
        s.examples = [
            type(e)(e.image, np.ascontiguousarray(m), e.source, e.axis, e.index)
            for e, m in zip(s.examples, masks, strict=True)
        ]
    return s


def cross_support(target: dict, n: int) -> SupportSet:
    """``n`` evenly spaced annotated slices of the *support* subject's structure."""
    labels, ax = target["support_labels"], target["axis"]
    present = np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != ax)))
    pick = np.unique(np.linspace(0, len(present) - 1, n + 2)[1:-1].round().astype(int))
    s = SupportSet()
    for i in present[pick]:
        add_slice(s, target["support_image"], labels, ax, int(i), target["support_window"])
    return s


def run_one(
    backend, target: dict, n: int, protocol: str, shuffled: bool = False, counts=None
) -> float:
    """Dice of one backend on one target structure (``cross``: supports from its partner)."""
    step = target.get("step", 2)
    if protocol == "cross":
        _, qry = protocol_slices(target["labels"], target["axis"], 1, "interleaved", step)
        support = cross_support(target, n)
    else:
        sup, qry = protocol_slices(target["labels"], target["axis"], n, protocol, step)
        support = make_support(target, sup, shuffled)
    work = segment_volume_iter(
        backend, support, target["image"], target["axis"], target["window"], slices=qry
    )
    res = drain(work)
    if counts is not None:  # which path each query took (auto)
        for k, v in res.path_counts().items():
            counts[k] = counts.get(k, 0) + v
    ax = target["axis"]
    pred = np.take(res.labels > 0, qry, ax)
    return dice(pred, np.take(target["labels"] > 0, qry, ax))


def group_dice(
    backend, targets, group, n, protocol, shuffled=False, per=None, counts=None
) -> float | None:
    """Mean Dice over the targets of one group (``per``: dict collecting each target's).

    None when the protocol does not apply to the group (``cross`` is only for
    ``cross-subject``, which only has ``cross``) or the backend cannot run it (interpolation
    without supports from the query's volume).
    """
    if (protocol == "cross") != (group == "cross-subject"):
        return None
    if protocol == "cross" and backend.name.startswith("interpolation"):
        return None
    scores = []
    for t in (t for t in targets if t["group"] == group):
        scores.append(run_one(backend, t, n, protocol, shuffled, counts))
        if per is not None:
            per.setdefault(t["name"], []).append(round(scores[-1], 4))
    return round(float(np.mean(scores)), 4)


def make_backend(name: str, checkpoints: dict[str, str]):
    """A backend by name, or ``NAME`` of ``--checkpoint NAME=PATH``.

    ``NAME`` is ``BACKEND@TAG`` (e.g. ``auto@w32``: the ``auto`` backend with that network) or
    a plain tag (an ``incontext-small``-architecture checkpoint).
    """
    if name in checkpoints:
        base = name.split("@", 1)[0] if "@" in name else "incontext-small"
        return build_backend(base, device="cpu", checkpoint=checkpoints[name])
    return build_backend(name, device="cpu")


def click_curve(backend, targets, group: str, n: int, clicks: int = CLICKS) -> list[float]:
    """Mean Dice over a group's targets after 0..``clicks`` simulated corrective clicks.

    Interleaved protocol with ``n`` supports; on every query slice a click goes to the innermost
    pixel of the largest error region (:func:`fmseg.incontext.prior.corrective_click`), all
    clicks so far and the previous probabilities are fed back.
    """
    from fmseg.incontext.prior import Clicks, corrective_click
    from fmseg.incontext.segment import binary_supports, volume_queries

    per_round: list[list[float]] = [[] for _ in range(clicks + 1)]
    for t in (t for t in targets if t["group"] == group):
        sup, qry = protocol_slices(t["labels"], t["axis"], n, "interleaved", t.get("step", 2))
        support = make_support(t, sup, False)
        _, idx, queries, pos = volume_queries(t["image"], t["axis"], t["window"], qry, None)
        gt = np.take(t["labels"] > 0, idx, t["axis"])
        gt = np.moveaxis(gt, t["axis"], 0)
        state = backend.prepare(binary_supports(support, 1))
        prob = backend.predict(state, queries, pos)
        per_round[0].append(dice(prob > 0.5, gt))
        given = [Clicks() for _ in idx]
        for r in range(1, clicks + 1):
            for i in range(len(idx)):
                c = corrective_click(prob[i] > 0.5, gt[i])
                if c is not None:
                    (row, col), positive = c
                    old = given[i]
                    if positive:
                        given[i] = Clicks(old.positive + ((row, col),), old.negative, old.box)
                    else:
                        given[i] = Clicks(old.positive, old.negative + ((row, col),), old.box)
            prob = backend.predict(state, queries, pos, clicks=given, previous=prob)
            per_round[r].append(dice(prob > 0.5, gt))
    return [round(float(np.mean(v)), 4) for v in per_round]


def speed(backend, target: dict, repeats: int = 3) -> dict:
    """Seconds to segment every slice of the 128-slice LiTS volume from 8 supports."""
    sup, _ = protocol_slices(target["labels"], target["axis"], 8, "interleaved")
    support = make_support(target, sup, False)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        drain(segment_volume_iter(backend, support, target["image"], 0, target["window"]))
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "slices": int(target["image"].shape[0])}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print/write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--backends", default="incontext-small,prototype,intensity,nearest,interpolation"
    )
    p.add_argument("--shuffled", default="incontext-small,prototype")
    p.add_argument("--shuffled-size", type=int, default=8)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--protocols", default="interleaved,split")
    p.add_argument("--speed", default="auto,incontext-small,nearest,interpolation,intensity")
    p.add_argument("--clicks", default="", help="backends whose click curves are measured")
    p.add_argument("--click-size", type=int, default=4)
    p.add_argument("--jobs", type=int, default=1, help="backends run in parallel processes")
    p.add_argument("--groups", default=",".join(GROUPS), help=f"of {GROUPS + CORPUS_GROUPS}")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an incontext-small-architecture checkpoint benchmarked as NAME",
    )
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path, help="write a PNG of Dice vs support size")
    p.add_argument("--replot", type=Path, help="only plot this earlier JSON result")
    args = p.parse_args(argv)
    if args.replot:
        result = json.loads(args.replot.read_text())
        plot(result, args.plot)
        return result
    groups = args.groups.split(",")
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    targets = load_targets(DATA) if set(groups) & set(GROUPS) else []
    targets += corpus_targets([g for g in groups if g in CORPUS_GROUPS])
    groups = [g for g in groups if any(t["group"] == g for t in targets)]
    sizes = [int(s) for s in args.sizes.split(",")]
    result: dict = {
        "sizes": sizes,
        "groups": groups,
        "dice": {},
        "per_target": {},
        "shuffled": {},
        "speed": {},
        "skipped": {},
        "checkpoints": checkpoints,
        "clicks": {},
        "paths": {},
    }
    names = args.backends.split(",")
    global _TARGETS
    _TARGETS = targets
    jobs = [(name, args, groups, sizes, checkpoints, "dice") for name in names]
    jobs += [(n, args, groups, sizes, checkpoints, "clicks") for n in args.clicks.split(",") if n]
    if args.jobs > 1:  # one process per backend (fork: the targets are shared, not copied)
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            parts = pool.starmap(bench_backend, jobs, chunksize=1)
    else:
        parts = [bench_backend(*job) for job in jobs]
    for part in parts:
        for key, value in part.items():
            for name, rows in value.items():
                if isinstance(rows, dict) and isinstance(result[key].get(name), dict):
                    result[key][name].update(rows)
                else:
                    result[key][name] = rows
    for name in args.speed.split(","):  # timed alone, after the accuracy runs
        if name in names and name not in result["skipped"] and targets[0]["name"] == "liver":
            result["speed"][name] = speed(make_backend(name, checkpoints), targets[0])
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        plot(result, args.plot)
    return result


_TARGETS: list[dict] = []  # set by main(); read by the worker processes


def bench_backend(name: str, args, groups, sizes, checkpoints, part: str = "dice") -> dict:
    """One backend's rows of the result.

    ``part`` ``"dice"``: curves, paths and the shuffled control; ``"clicks"``: the click
    curves (a separate job, so the two run in parallel).
    """
    targets = _TARGETS
    out: dict = {k: {} for k in ("dice", "per_target", "shuffled", "skipped", "clicks", "paths")}
    try:
        backend = make_backend(name, checkpoints)
    except (WeightsError, ValueError) as err:
        out["skipped"][name] = str(err)
        return out
    if part == "clicks":
        curves = {
            g: click_curve(backend, targets, g, args.click_size)
            for g in groups
            if g != "cross-subject"
        }
        out["clicks"][name] = {"size": args.click_size, **curves}
        print(f"{name} clicks: {out['clicks'][name]}", flush=True)
        return out
    for protocol in args.protocols.split(","):
        t0 = time.perf_counter()
        per = out["per_target"].setdefault(name, {}).setdefault(protocol, {})
        counts = out["paths"].setdefault(name, {}).setdefault(protocol, {})
        rows = {
            g: [group_dice(backend, targets, g, n, protocol, per=per, counts=counts) for n in sizes]
            for g in groups
            if (protocol == "cross") == (g == "cross-subject")
        }
        rows = {g: v for g, v in rows.items() if None not in v}
        out["dice"].setdefault(name, {})[protocol] = rows
        print(f"{name} {protocol}: {rows} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if name in args.shuffled.split(","):
        n = args.shuffled_size
        rows = {g: group_dice(backend, targets, g, n, "interleaved", True) for g in groups}
        rows = {g: v for g, v in rows.items() if v is not None}
        out["shuffled"][name] = {"size": n, "protocol": "interleaved", **rows}
        print(f"{name} shuffled supports, n={n}: {rows}", flush=True)
    return out


def plot(result: dict, path: Path) -> None:
    """Dice vs support size: a panel per (group, protocol) with data, a line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = sorted({p for v in result["dice"].values() for p in v})
    groups = result.get("groups", list(GROUPS))
    panels = [
        (g, p)
        for g in groups
        for p in protocols
        if any(g in per.get(p, {}) for per in result["dice"].values())
    ]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.75 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (group, protocol) in zip(axes.flat, panels, strict=False):
        for name, per in result["dice"].items():
            if group in per.get(protocol, {}):
                ax.plot(result["sizes"], per[protocol][group], marker="o", label=name)
        for name, sh in result.get("shuffled", {}).items():
            if protocol == sh["protocol"] and group in sh:
                ax.plot([sh["size"]], [sh[group]], "x", ms=9, label=f"{name}, shuffled supports")
        ax.set_title(f"{TITLES[group]}, {protocol}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["sizes"], [str(n) for n in result["sizes"]])
        ax.set_ylim(0, 1)
        ax.set_xlabel("support slices")
        ax.set_ylabel("Dice (query slices)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
