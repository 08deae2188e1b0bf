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
from incontext_protocols import click_curve, group_dice, make_support, protocol_slices

from fmseg.incontext import build_backend, segment_volume_iter
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


def targets_for(groups: list[str]) -> list[dict]:
    """Liver and AAL targets when either group is asked for, then the corpus groups asked for."""
    targets = load_targets(DATA) if set(groups) & set(GROUPS) else []
    return targets + corpus_targets([g for g in groups if g in CORPUS_GROUPS])


def make_backend(name: str, checkpoints: dict[str, str]):
    """A backend by name, or ``NAME`` of ``--checkpoint NAME=PATH``.

    ``NAME`` is ``BACKEND@TAG`` (e.g. ``auto@w32``: the ``auto`` backend with that network) or
    a plain tag (an ``incontext-small``-architecture checkpoint).
    """
    if name in checkpoints:
        base = name.split("@", 1)[0] if "@" in name else "incontext-small"
        return build_backend(base, device="cpu", checkpoint=checkpoints[name])
    return build_backend(name, device="cpu")


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
    targets = targets_for(groups)
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
