"""``fmseg incontext``: segment a volume from annotated support slices of other volumes.

Example (supports from two annotated slices of one CT, query another CT)::

    fmseg incontext --support ct1.nii.gz:liver1.nii.gz:40,60 --query ct2.nii.gz \
        --axis 2 --window -160 240 --out liver2.nii.gz
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .incontext import BACKENDS, SupportSet, add_slice, build_backend, segment_volume_iter
from .io import load_volume, save_labels, save_volume
from .progress import Progress, drain


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``incontext`` sub-command."""
    s = sub.add_parser("incontext", help="segment a volume from annotated support slices")
    s.add_argument(
        "--support",
        action="append",
        default=[],
        metavar="IMG:MASK[:SLICES]",
        help="image and label volume; SLICES like 10,20,30-34 along --axis (default: every "
        "labelled slice); repeatable",
    )
    s.add_argument("--load-support", help="a support set saved before (.npz + .json)")
    s.add_argument("--save-support", help="write the support set used (.npz + .json)")
    s.add_argument("--query", required=True, help="volume to segment (NIfTI/NRRD)")
    s.add_argument("--out", required=True, help="output label map (.nii.gz/.nii/.nrrd)")
    s.add_argument("--prob-out", help="also write the foreground probability (one label only)")
    s.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="default 2 (z)")
    s.add_argument("--label", type=int, action="append", help="label value(s) to segment")
    s.add_argument("--backend", default="incontext-small", choices=sorted(BACKENDS))
    s.add_argument("--checkpoint", help="weights for universeg-v1 (universeg_v1_nf64_ss64_STA.pt)")
    s.add_argument("--ensemble", type=int, default=1, help="random support subsets averaged")
    s.add_argument("--subset", type=int, help="supports per ensemble member")
    s.add_argument(
        "--window",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="intensity window for supports and query (default: each volume's 0.5-99.5 %%)",
    )
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def parse_slices(text: str) -> list[int]:
    """``"10,20,30-32"`` -> ``[10, 20, 30, 31, 32]``."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        try:
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
        except ValueError:
            raise ValueError(f"bad slice list '{text}': use e.g. 10,20,30-34") from None
    return out


def build_support(args: argparse.Namespace) -> SupportSet:
    """The support set from ``--load-support`` and every ``--support``."""
    support = SupportSet.load(args.load_support) if args.load_support else SupportSet()
    for spec in args.support:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--support '{spec}': expected IMG:MASK or IMG:MASK:SLICES")
        img, lab = load_volume(parts[0]), load_volume(parts[1])
        labels = np.rint(lab.array).astype(np.int32)
        if len(parts) == 3:
            slices = parse_slices(parts[2])
        else:
            other = tuple(a for a in range(3) if a != args.axis)
            slices = np.flatnonzero(labels.any(axis=other)).tolist()
        for i in slices:
            add_slice(support, img.array, labels, args.axis, i, args.window)
    if len(support) == 0:
        raise ValueError("no support slices: give --support IMG:MASK[:SLICES] or --load-support")
    return support


def run(args: argparse.Namespace) -> int:
    """Run ``fmseg incontext``; returns the number of labelled voxels written."""
    support = build_support(args)
    if args.save_support:
        support.save(args.save_support)
    query = load_volume(args.query)
    backend = build_backend(
        args.backend,
        args.device,
        checkpoint=args.checkpoint,
        ensemble=args.ensemble,
        subset=args.subset,
    )
    t0 = time.perf_counter()
    work = segment_volume_iter(backend, support, query.array, args.axis, args.window, args.label)
    res = drain(work, _print_progress)
    save_labels(args.out, res.labels, query.affine)
    if args.prob_out:
        if len(res.probs) != 1:
            raise ValueError("--prob-out needs exactly one label (use --label)")
        save_volume(args.prob_out, next(iter(res.probs.values())), query.affine)
    n = int((res.labels > 0).sum())
    print(
        f"\nwrote {args.out}: {n} voxels from {len(support)} supports with {backend.name} "
        f"in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return n


def _print_progress(step: Progress) -> None:
    print(f"\r{step.message} ({100 * step.fraction:.0f}%)", end="", file=sys.stderr, flush=True)
