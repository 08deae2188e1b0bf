"""``fmseg segment``: one object from prompts on a slice, or a whole volume with an adapter.

Coordinates on the command line are voxel indices of the two axes that remain after
removing ``--axis``, in ascending axis order. For a NIfTI file (x, y, z) and ``--axis 2``
(axial), ``--box X0 Y0 X1 Y1`` and ``--point X Y`` are in x, y voxels.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ..adapters.api import load_adapter
from ..adapters.facade import THRESHOLD, apply_iter
from ..interactive.fuse import DEFAULT_RULE, RULES, parse_axes, propagate_axes_iter
from ..interactive.prefetch import attach_disk_cache
from ..interactive.prompts import Box, Point, PromptError, Prompts
from ..interactive.session import Session
from ..io import Volume, save_labels
from ..progress import drain
from ..registry import REGISTRY
from ..validation import check_slices
from .common import CliError, add_device, add_window, coordinate, print_progress
from .files import VOLUME, check_adapter, check_outputs, read_volume


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``segment`` sub-command."""
    s = sub.add_parser("segment", help="segment one object from prompts on a slice")
    s.add_argument("image", help="NIfTI (.nii, .nii.gz) or NRRD volume")
    s.add_argument("--out", required=True, help="output mask (.nii.gz/.nii/.nrrd)")
    s.add_argument("--slice", type=int, help="slice index along --axis (with prompts)")
    s.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="default 2 (z)")
    s.add_argument("--box", type=coordinate, nargs=4, metavar=("A0", "B0", "A1", "B1"))
    for flag, kind in (("--point", "positive"), ("--negative-point", "negative")):
        s.add_argument(
            flag,
            type=coordinate,
            nargs=2,
            action="append",
            default=[],
            metavar=("A", "B"),
            help=f"{kind} click (repeatable)",
        )
    s.add_argument("--propagate", action="store_true", help="propagate through the volume")
    s.add_argument(
        "--axes",
        help="with --propagate: also propagate along these axes and fuse, e.g. 0,1,2 (must "
        "include --axis; each other axis is seeded from the first result)",
    )
    s.add_argument(
        "--fuse",
        default=DEFAULT_RULE,
        choices=RULES,
        help=f"how --axes results are fused: or (any axis), vote (more than half; with two axes: "
        f"both), and (every axis); default {DEFAULT_RULE} (docs/accuracy.md)",
    )
    s.add_argument(
        "--cache-dir",
        help="keep slice embeddings here (fp16, keyed by image content, model, axis, slice and "
        "window): a later run on the same image only decodes",
    )
    s.add_argument("--label", type=int, default=1, help="label value written (default 1)")
    s.add_argument("--model", default="litemedsam", choices=sorted(REGISTRY))
    s.add_argument("--checkpoint", help="checkpoint file for models without bundled weights")
    add_window(
        s,
        "intensity window, e.g. -160 240 for abdominal CT (default: with --adapter the one it "
        "was trained with, else the 0.5-99.5 percentiles)",
    )
    add_device(s)
    s.add_argument(
        "--adapter",
        help="adapter file from `fmseg adapt`; without prompts its prompt-free head (or 3D "
        "model) segments the whole volume",
    )
    s.set_defaults(run=run)


def _each_prompt(args: argparse.Namespace) -> list[tuple[str, Prompts]]:
    """Every prompt given, alone, with the words the user typed for it."""
    # (a, b) are indices of the first and second remaining axes = (row, column) of the slice.
    out = []
    for flag, pairs, positive in (
        ("--point", args.point, True),
        ("--negative-point", args.negative_point, False),
    ):
        out += [(f"{flag} {a} {b}", Prompts((Point(b, a, positive),))) for a, b in pairs]
    if args.box is not None:
        a0, b0, a1, b1 = args.box
        out.append((f"--box {a0} {b0} {a1} {b1}", Prompts(box=Box(b0, a0, b1, a1))))
    return out


def prompts_from_args(args: argparse.Namespace) -> Prompts:
    """The slice prompts of ``--box``, ``--point`` and ``--negative-point`` (x = column)."""
    given = [p for _, p in _each_prompt(args)]
    box = next((p.box for p in given if p.box is not None), None)
    return Prompts(tuple(pt for p in given for pt in p.points), box)


def check_prompts(args: argparse.Namespace, shape: tuple[int, ...]) -> None:
    """Refuse a ``--slice`` or a prompt outside the volume, echoing the numbers as typed."""
    check_slices([args.slice], shape, args.axis)
    rows, cols = (a for a in range(3) if a != args.axis)
    extent = f"axis {rows} runs 0..{shape[rows] - 1} and axis {cols} 0..{shape[cols] - 1}"
    for typed, single in _each_prompt(args):
        try:
            single.validate((shape[rows], shape[cols]))
        except PromptError:
            where = f"slice {args.slice} along axis {args.axis} ({extent}"
            if single.box is None:
                raise CliError(f"{typed} is outside {where})") from None
            raise CliError(
                f"{typed} does not fit {where}; a box must overlap them and span one voxel or more)"
            ) from None


def check_axes(args: argparse.Namespace) -> tuple[int, ...]:
    """The ``--axes`` to propagate along (``--axis`` first), refused before any compute."""
    if args.axes is None:
        return (args.axis,)
    if not args.propagate:
        raise CliError("--axes needs --propagate")
    try:
        return parse_axes(args.axes, args.axis)
    except ValueError as err:
        raise CliError(f"--axes {args.axes}: {err}") from None


def run(args: argparse.Namespace) -> int:
    """Run ``fmseg segment``; returns the number of voxels in the written mask."""
    check_outputs(args, out=VOLUME)
    vol = read_volume(args.image)
    prompts = prompts_from_args(args)
    if args.adapter:
        check_adapter(args.adapter)
    if prompts.empty and args.adapter:
        return segment_with_adapter(args, vol)
    if prompts.empty:
        raise ValueError("give a --box and/or --point")
    if args.slice is None:
        raise ValueError("give the --slice the prompts are on")
    check_prompts(args, vol.array.shape)
    axes = check_axes(args)
    session = Session.from_registry(
        vol.array,
        args.model,
        spacing=vol.spacing,
        window=args.window,
        device=args.device,
        checkpoint=args.checkpoint,
        adapter=args.adapter,
    )
    if args.cache_dir:
        attach_disk_cache(session, args.cache_dir)
    t0 = time.perf_counter()
    session.set_prompts(args.axis, args.slice, prompts)
    if args.propagate and len(axes) > 1:
        work = propagate_axes_iter(session, args.axis, args.slice, axes, rule=args.fuse)
        fused = drain(work, print_progress)
        print(f"\npropagated and fused ({args.fuse}): {fused.reason}", file=sys.stderr)
    elif args.propagate:
        result = drain(session.propagate_iter(args.axis, args.slice), print_progress)
        print(
            f"\npropagated slices {result.first}..{result.last} ({result.reason})", file=sys.stderr
        )
    session.commit(args.label)
    save_labels(args.out, session.labels.astype(np.uint16), vol.affine)
    n = int((session.labels > 0).sum())
    print(f"wrote {args.out}: {n} voxels in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return n


def segment_with_adapter(args: argparse.Namespace, vol: Volume) -> int:
    """Prompt-free ``fmseg segment --adapter``: every slice (2D auto head) or the volume (3D)."""
    model = load_adapter(args.adapter, device=args.device, checkpoint=args.checkpoint)
    work = apply_iter(model, vol.array, args.axis, spacing=vol.spacing, window=args.window)
    prob = drain(work, print_progress)
    labels = (prob > THRESHOLD).astype(np.uint16) * args.label
    save_labels(args.out, labels, vol.affine)
    n = int((labels > 0).sum())
    print(f"\nwrote {args.out}: {n} voxels", file=sys.stderr)
    return n
