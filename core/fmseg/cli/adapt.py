"""``fmseg adapt``: few-shot adapter training on annotated images.

Examples (``fmseg segment --adapter`` applies the file)::

    fmseg adapt --train t1.nii.gz:aal.nii.gz:60,70,80,90,100 --label 1 --axis 2 \
        --base litemedsam --method decoder --out precentral.pt
    fmseg segment t1b.nii.gz --adapter precentral.pt --out precentral.nii.gz   # auto head / 3D
    fmseg segment t1b.nii.gz --adapter precentral.pt --box 40 60 90 120 --slice 80 --out m.nii.gz
"""

from __future__ import annotations

import argparse
import json
import sys

from ..adapters.api import save_adapter, train_adapter_iter
from ..adapters.data import Annotation
from ..adapters.facade import (
    CPU_TIME_LIMIT,
    HEADS,
    WHERES,
    adapter_bases,
    default_settings,
    resolve_config,
)
from ..adapters.methods import METHODS
from ..adapters.trainer import TrainSettings
from ..progress import drain
from .common import add_device, add_window, print_progress
from .files import ADAPTER, check_outputs, read_pair


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``adapt`` sub-command."""
    s = sub.add_parser("adapt", help="train a few-shot adapter on annotated images")
    s.add_argument(
        "--train",
        action="append",
        required=True,
        metavar="IMG:LABEL[:SLICES]",
        help="image and label volume; SLICES like 10,20,30-34 along --axis are the annotated "
        "slices (default: the whole volume is annotated); repeatable",
    )
    s.add_argument("--label", type=int, required=True, help="label value to learn")
    s.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="slice axis (2D)")
    s.add_argument("--base", default="litemedsam", choices=sorted(adapter_bases()))
    s.add_argument("--method", default="decoder", help=f"{', '.join(METHODS)}; join with +")
    s.add_argument("--where", choices=WHERES, help="part PEFT acts on (default: one that fits)")
    s.add_argument("--head", choices=HEADS, help="2D bases: default the head that fits the method")
    s.add_argument("--steps", type=int, help=f"maximum steps (default {TrainSettings.steps})")
    s.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help=f"stop training after SECONDS (default {CPU_TIME_LIMIT:g} on CPU, none on a GPU; "
        "0: no limit); the best state validated so far is kept",
    )
    s.add_argument("--lr", type=float, help="learning rate (default: per method)")
    s.add_argument("--rank", type=int, default=4, help="LoRA / ARENA rank")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--patch", type=int, default=64, help="3D patch side (multiple of 16)")
    s.add_argument("--checkpoint", help="base weights for models without bundled weights")
    add_window(
        s,
        "2D bases: fixed intensity window of the training images, e.g. -160 240 for CT; "
        "kept in the adapter file (default: each image's 0.5-99.5 %%)",
    )
    add_device(s)
    s.add_argument("--out", required=True, help="adapter file to write (.pt)")
    s.set_defaults(run=run)


def _annotations(args: argparse.Namespace) -> list[Annotation]:
    out = []
    for spec in args.train:
        image, labels, slices = read_pair(spec, "--train", "LABEL")
        slices = None if slices is None else tuple(slices)
        out.append(Annotation(image.array, labels, args.label, args.axis, slices, image.spacing))
    return out


def run(args: argparse.Namespace) -> dict:
    """Run ``fmseg adapt``; returns the metrics written into the adapter file."""
    check_outputs(args, out=ADAPTER)
    config = resolve_config(
        args.base, args.method, args.where, args.head, rank=args.rank, alpha=2 * args.rank
    )
    if args.time_limit is not None and args.time_limit < 0:
        raise ValueError(f"--time-limit must be 0 (no limit) or more, got {args.time_limit:g}")
    settings = default_settings(
        args.method,
        args.steps,
        args.lr,
        "default" if args.time_limit is None else args.time_limit,
        args.device,
        seed=args.seed,
        patch=args.patch,
    )
    work = train_adapter_iter(
        _annotations(args),
        args.base,
        config,
        settings,
        device=args.device,
        checkpoint=args.checkpoint,
        window=args.window,
    )
    result = drain(work, print_progress)
    metrics = result.metrics()
    save_adapter(args.out, result.model, metrics)
    print(f"\nwrote {args.out}", file=sys.stderr)
    print(json.dumps(metrics))
    return metrics
