"""``fmseg incontext``: segment a volume from annotated support slices of other volumes.

Example (supports from two annotated slices of one CT, query another CT)::

    fmseg incontext --support ct1.nii.gz:liver1.nii.gz:40,60 --query ct2.nii.gz \
        --axis 2 --window -160 240 --out liver2.nii.gz
"""

from __future__ import annotations

import argparse
import sys
import time

from ..incontext import BACKENDS, build_backend, segment_volume_iter
from ..incontext.factory import DEFAULT_BACKEND
from ..io import save_labels, save_volume
from ..progress import drain
from ..report import describe_paths
from .common import add_device, add_window, print_progress
from .files import VOLUME, build_support, check_outputs, read_volume


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
    s.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        choices=sorted(BACKENDS),
        help=f"default {DEFAULT_BACKEND}: the prior network near annotated slices of the "
        "same volume, plain in-context elsewhere",
    )
    s.add_argument("--checkpoint", help="weights for universeg-v1 (universeg_v1_nf64_ss64_STA.pt)")
    s.add_argument("--ensemble", type=int, default=1, help="random support subsets averaged")
    s.add_argument("--subset", type=int, help="supports per ensemble member")
    add_window(
        s,
        "intensity window for supports and query (default: each volume's 0.5-99.5 %%)",
    )
    add_device(s)
    s.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``fmseg incontext``; returns the number of labelled voxels written."""
    check_outputs(args, out=VOLUME, prob_out=VOLUME, save_support=None)
    support = build_support(args)
    if args.prob_out and args.label is None and len(support.label_values) != 1:
        raise ValueError("--prob-out needs exactly one label (use --label)")
    if args.save_support:
        support.save(args.save_support)
    query = read_volume(args.query)
    backend = build_backend(
        args.backend,
        args.device,
        checkpoint=args.checkpoint,
        ensemble=args.ensemble,
        subset=args.subset,
    )
    t0 = time.perf_counter()
    work = segment_volume_iter(backend, support, query.array, args.axis, args.window, args.label)
    res = drain(work, print_progress)
    save_labels(args.out, res.labels, query.affine)
    if args.prob_out:
        save_volume(args.prob_out, next(iter(res.probs.values())), query.affine)
    n = int((res.labels > 0).sum())
    print(
        f"\nwrote {args.out}: {n} voxels from {len(support)} supports with {backend.name} "
        f"in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    report = describe_paths(backend.name, res.path_counts())
    if report:
        print(report, file=sys.stderr)
    return n
