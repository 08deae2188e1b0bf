"""``fmseg adapt``: few-shot adapter training on annotated images; applying adapters.

Examples::

    fmseg adapt --train t1.nii.gz:aal.nii.gz:60,70,80,90,100 --label 1 --axis 2 \
        --base litemedsam --method decoder --out precentral.pt
    fmseg segment t1b.nii.gz --adapter precentral.pt --out precentral.nii.gz   # auto head / 3D
    fmseg segment t1b.nii.gz --adapter precentral.pt --box 40 60 90 120 --slice 80 --out m.nii.gz
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .adapters.api import load_adapter, save_adapter, train_adapter_iter
from .adapters.data import Annotation
from .adapters.facade import (
    HEADS,
    THRESHOLD,
    WHERES,
    adapter_bases,
    apply_iter,
    default_settings,
    resolve_config,
)
from .adapters.methods import METHODS
from .adapters.trainer import TrainSettings, TrainStep
from .cli_incontext import parse_slices
from .io import Volume, load_volume, save_labels
from .progress import Progress, drain


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
    s.add_argument("--lr", type=float, help="learning rate (default: per method)")
    s.add_argument("--rank", type=int, default=4, help="LoRA / ARENA rank")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--patch", type=int, default=64, help="3D patch side (multiple of 16)")
    s.add_argument("--checkpoint", help="base weights for models without bundled weights")
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    s.add_argument("--out", required=True, help="adapter file to write (.pt)")


def _annotations(args: argparse.Namespace) -> list[Annotation]:
    out = []
    for spec in args.train:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--train '{spec}': expected IMG:LABEL or IMG:LABEL:SLICES")
        img, lab = load_volume(parts[0]), load_volume(parts[1])
        slices = tuple(parse_slices(parts[2])) if len(parts) == 3 else None
        labels = np.rint(lab.array).astype(np.int32)
        out.append(Annotation(img.array, labels, args.label, args.axis, slices, img.spacing))
    return out


def _report(step: Progress) -> None:
    if isinstance(step, TrainStep):
        val = "" if step.val_dice is None else f", val Dice {step.val_dice:.3f}"
        print(
            f"\rstep {step.done}/{step.total}: loss {step.loss:.4f}{val}   ",
            end="",
            file=sys.stderr,
        )
    else:
        print(f"\r{step.message} ({100 * step.fraction:.0f}%)", end="", file=sys.stderr)


def run(args: argparse.Namespace) -> dict:
    """Run ``fmseg adapt``; returns the metrics written into the adapter file."""
    config = resolve_config(
        args.base, args.method, args.where, args.head, rank=args.rank, alpha=2 * args.rank
    )
    settings = default_settings(args.method, args.steps, args.lr, seed=args.seed, patch=args.patch)
    work = train_adapter_iter(
        _annotations(args),
        args.base,
        config,
        settings,
        device=args.device,
        checkpoint=args.checkpoint,
    )
    result = drain(work, _report)
    metrics = result.metrics()
    save_adapter(args.out, result.model, metrics)
    print(f"\nwrote {args.out}", file=sys.stderr)
    print(json.dumps(metrics))
    return metrics


def segment_with_adapter(args: argparse.Namespace, vol: Volume) -> int:
    """Prompt-free ``fmseg segment --adapter``: every slice (2D auto head) or the volume (3D)."""
    model = load_adapter(args.adapter, device=args.device, checkpoint=args.checkpoint)
    prob = drain(apply_iter(model, vol.array, args.axis, spacing=vol.spacing), _report)
    labels = (prob > THRESHOLD).astype(np.uint16) * args.label
    save_labels(args.out, labels, vol.affine)
    n = int((labels > 0).sum())
    print(f"\nwrote {args.out}: {n} voxels", file=sys.stderr)
    return n
