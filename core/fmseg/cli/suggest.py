"""``fmseg suggest``: which slice of a partly annotated volume to annotate next.

Prints slice indices along ``--axis``, best first, one per line (``--json``: with scores,
their parts and a one-line reason each). Example (slices 40 and 80 annotated)::

    fmseg suggest --support ct.nii.gz:liver.nii.gz:40,80 --axis 2 --window -160 240 --top 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from ..incontext import BACKENDS, SAMPLERS, build_backend, build_sampler
from ..incontext.factory import DEFAULT_BACKEND
from ..incontext.suggest import WEIGHT, suggest_slices_iter
from ..progress import drain
from .common import CliError, add_device, add_window, print_progress
from .files import build_support, read_pair


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``suggest`` sub-command."""
    s = sub.add_parser("suggest", help="which slice to annotate next")
    s.add_argument(
        "--support",
        required=True,
        metavar="IMG:LABEL[:SLICES]",
        help="the volume and its label map; SLICES like 10,20,30-34 are the annotated ones "
        "(default: every labelled slice); the other slices are ranked",
    )
    s.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="default 2 (z)")
    s.add_argument("--label", type=int, help="label value (default: the only one)")
    s.add_argument("--top", type=int, default=5, help="slices printed (default 5; 0: all)")
    s.add_argument("--json", action="store_true", help="scores, their parts and reasons")
    s.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(BACKENDS))
    s.add_argument(
        "--sampler",
        choices=sorted(SAMPLERS),
        help="candidates from this sampler (default: leave one annotation out)",
    )
    s.add_argument(
        "--weight",
        type=float,
        default=WEIGHT,
        help=f"share of disagreement vs distance (default {WEIGHT}; 1: disagreement only)",
    )
    s.add_argument("--seed", type=int, default=0)
    add_window(s, "intensity window (default: the volume's 0.5-99.5 %%)")
    add_device(s)
    s.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``fmseg suggest``; returns the number of slices printed."""
    if args.top < 0:
        raise CliError(f"--top must be 0 or more, got {args.top}")
    if not 0.0 <= args.weight <= 1.0:
        raise CliError(f"--weight must be in [0, 1], got {args.weight}")
    args.load_support, specs = None, [args.support]
    args.support = specs
    support = build_support(args)
    image, _, _ = read_pair(specs[0], "--support", "LABEL")
    backend = build_backend(args.backend, args.device)
    sampler = None
    if args.sampler:
        sampler = build_sampler(args.sampler, device=args.device, seed=args.seed)
    t0 = time.perf_counter()
    work = suggest_slices_iter(
        backend, support, image.array, args.axis, args.window, args.label,
        weight=args.weight, sampler=sampler, seed=args.seed,
    )  # fmt: skip
    res = drain(work, print_progress)
    ranked = res.ranked[: args.top] if args.top else res.ranked
    print(
        f"\n{len(res.ranked)} slices ranked with {backend.name} in "
        f"{time.perf_counter() - t0:.1f} s; annotated {res.annotated}, predicted extent "
        f"{res.extent[0]}-{res.extent[1]}",
        file=sys.stderr,
    )
    if args.json:
        out = {
            "axis": res.axis,
            "label": res.label,
            "annotated": res.annotated,
            "extent": list(res.extent),
            "candidates": res.candidates,
            "ranked": [asdict(s) for s in ranked],
        }
        print(json.dumps(out, indent=1, ensure_ascii=False))
    else:
        for s in ranked:
            print(s.index)
    return len(ranked)
