"""``fmseg uncertainty``: K plausible segmentations of a volume, their mean and two maps.

Example::

    fmseg uncertainty --support ct1.nii.gz:liver1.nii.gz:40,60 --query ct2.nii.gz --axis 2 \
        --window -160 240 --sampler tyche-small --k 8 --samples s.nii.gz --mean m.nii.gz \
        --disagreement d.nii.gz --total t.nii.gz

The maps and what their values mean are :data:`fmseg.uncertainty.MAPS`: ``--disagreement``
(between the candidates) and ``--total`` / ``--entropy`` (total uncertainty, the entropy of
the mean), both in bits in [0, 1].
"""

from __future__ import annotations

import argparse
import sys
import time

from .. import uncertainty as U
from ..incontext import SAMPLERS, build_sampler, sample_volume_iter
from ..io import save_samples, save_volume
from ..progress import drain
from .common import add_device, add_window, print_progress
from .files import NIFTI, VOLUME, build_support, check_outputs, read_volume


def _help(kind: str) -> str:
    return U.legend(kind).text.replace("%", "%%") + " (NIfTI/NRRD)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``uncertainty`` sub-command."""
    s = sub.add_parser(
        "uncertainty", help="K plausible masks, their mean, disagreement and total uncertainty"
    )
    s.add_argument("--support", action="append", default=[], metavar="IMG:MASK[:SLICES]")
    s.add_argument("--load-support", help="a support set saved before (.npz + .json)")
    s.add_argument("--query", required=True, help="volume to segment (NIfTI/NRRD)")
    s.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="default 2 (z)")
    s.add_argument("--label", type=int, help="label value to segment (default: any)")
    s.add_argument("--sampler", default="tyche-small", choices=sorted(SAMPLERS))
    s.add_argument("--k", type=int, default=8, help="samples (default 8)")
    s.add_argument("--seed", type=int, default=0)
    add_window(s)
    s.add_argument("--samples", help="4D NIfTI of the K sample probabilities")
    s.add_argument("--mean", help="mean probability (NIfTI/NRRD)")
    s.add_argument("--disagreement", metavar="PATH", help=_help("disagreement"))
    s.add_argument("--entropy", "--total", metavar="PATH", help=_help("total"))
    s.add_argument("--checkpoint", help="weights for tyche-v1")
    add_device(s)
    s.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``fmseg uncertainty``; returns K."""
    maps = {"disagreement": args.disagreement, "total": args.entropy}
    if not (args.samples or args.mean or any(maps.values())):
        raise ValueError("give at least one of --samples, --mean, --disagreement, --total")
    check_outputs(args, samples=NIFTI, mean=VOLUME, disagreement=VOLUME, entropy=VOLUME)
    support = build_support(args)
    query = read_volume(args.query)
    sampler = build_sampler(args.sampler, args.k, args.device, checkpoint=args.checkpoint,
                            seed=args.seed)  # fmt: skip
    t0 = time.perf_counter()
    work = sample_volume_iter(sampler, support, query.array, args.axis, args.window, args.label)
    samples = drain(work, print_progress)
    if args.samples:
        save_samples(args.samples, samples, query.affine)
    if args.mean:
        save_volume(args.mean, U.mean_probability(samples), query.affine)
    for kind, path in maps.items():
        if path:
            save_volume(path, U.uncertainty_map(samples, kind), query.affine)
    print(f"\n{len(samples)} samples with {sampler.name} in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)  # fmt: skip
    return len(samples)
