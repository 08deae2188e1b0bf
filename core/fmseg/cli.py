"""Command line: ``fmseg segment``, ``incontext``, ``uncertainty``, ``adapt``, ``models``.

Coordinates on the command line are voxel indices of the two axes that remain after
removing ``--axis``, in ascending axis order. For a NIfTI file (x, y, z) and ``--axis 2``
(axial), ``--box X0 Y0 X1 Y1`` and ``--point X Y`` are in x, y voxels.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import cli_adapt, cli_incontext, cli_uncertainty
from .io import load_volume, save_labels
from .progress import Progress, drain
from .prompts import Box, Point, Prompts
from .registry import REGISTRY
from .session import Session


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fmseg", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list registered models, weights and licences")
    s = sub.add_parser("segment", help="segment one object from prompts on a slice")
    s.add_argument("image", help="NIfTI (.nii, .nii.gz) or NRRD volume")
    s.add_argument("--out", required=True, help="output mask (.nii.gz/.nii/.nrrd)")
    s.add_argument("--slice", type=int, help="slice index along --axis (with prompts)")
    s.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="default 2 (z)")
    s.add_argument("--box", type=float, nargs=4, metavar=("A0", "B0", "A1", "B1"))
    s.add_argument(
        "--point",
        type=float,
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help="positive click (repeatable)",
    )
    s.add_argument(
        "--negative-point",
        type=float,
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help="negative click (repeatable)",
    )
    s.add_argument("--propagate", action="store_true", help="propagate through the volume")
    s.add_argument("--label", type=int, default=1, help="label value written (default 1)")
    s.add_argument("--model", default="litemedsam", choices=sorted(REGISTRY))
    s.add_argument("--checkpoint", help="checkpoint file for models without bundled weights")
    s.add_argument(
        "--window",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="intensity window, e.g. -160 240 for abdominal CT",
    )
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    s.add_argument(
        "--adapter",
        help="adapter file from `fmseg adapt`; without prompts its prompt-free head (or 3D "
        "model) segments the whole volume",
    )
    cli_incontext.add_parser(sub)
    cli_adapt.add_parser(sub)
    cli_uncertainty.add_parser(sub)
    return p


def _prompts(args: argparse.Namespace) -> Prompts:
    # (a, b) are indices of the first and second remaining axes = (row, column) of the slice.
    pts = [Point(b, a, True) for a, b in args.point]
    pts += [Point(b, a, False) for a, b in args.negative_point]
    box = None
    if args.box is not None:
        a0, b0, a1, b1 = args.box
        box = Box(b0, a0, b1, a1)
    return Prompts(tuple(pts), box)


def _print_progress(step: Progress) -> None:
    print(f"\r{step.message} ({100 * step.fraction:.0f}%)", end="", file=sys.stderr, flush=True)


def segment(args: argparse.Namespace) -> int:
    """Run ``fmseg segment``; returns the number of voxels in the written mask."""
    vol = load_volume(args.image)
    prompts = _prompts(args)
    if prompts.empty and args.adapter:
        return cli_adapt.segment_with_adapter(args, vol)
    if prompts.empty:
        raise ValueError("give a --box and/or --point")
    if args.slice is None:
        raise ValueError("give the --slice the prompts are on")
    session = Session(
        vol.array,
        vol.spacing,
        model=args.model,
        window=args.window,
        device=args.device,
        checkpoint=args.checkpoint,
        adapter=args.adapter,
    )
    t0 = time.perf_counter()
    session.set_prompts(args.axis, args.slice, prompts)
    if args.propagate:
        result = drain(session.propagate_iter(args.axis, args.slice), _print_progress)
        print(
            f"\npropagated slices {result.first}..{result.last} ({result.reason})", file=sys.stderr
        )
    session.commit(args.label)
    save_labels(args.out, session.labels.astype(np.uint16), vol.affine)
    n = int((session.labels > 0).sum())
    print(f"wrote {args.out}: {n} voxels in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return n


def list_models() -> None:
    """Print the registry."""
    for spec in REGISTRY.values():
        src = spec.weights.location if spec.weights else "your checkpoint (--checkpoint)"
        print(
            f"{spec.name:20s} {spec.description}\n{'':20s} weights: {src}\n"
            f"{'':20s} licence: {spec.licence}"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fmseg`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "models":
            list_models()
        elif args.command == "incontext":
            cli_incontext.run(args)
        elif args.command == "uncertainty":
            cli_uncertainty.run(args)
        elif args.command == "adapt":
            cli_adapt.run(args)
        else:
            segment(args)
    except (ValueError, FileNotFoundError, RuntimeError, IndexError) as err:
        print(f"fmseg: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
