"""``fmseg batch``: apply one job to every case of a cohort, on a Dask cluster.

Examples::

    fmseg batch 'cohort/*.nii.gz' --job boxes --boxes boxes.csv --propagate \
        --window -160 240 --out seg/ --workers 4
    fmseg batch manifest.csv --job incontext --support liver.npz --out seg/ \
        --scheduler tcp://10.0.0.5:8786

Each case writes ``<case>.nii.gz`` and its provenance ``<case>.json`` into ``--out``; the
summary (one row per case) is ``--out``/summary.csv. A re-run skips cases already done.
"""

from __future__ import annotations

import argparse
import sys

from ..batch import KINDS, JobSpec, run
from ..incontext.factory import BACKENDS, SAMPLERS
from ..registry import REGISTRY
from .common import CliError, add_window, device_choice, print_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``batch`` sub-command."""
    s = sub.add_parser("batch", help="apply boxes, a support set, an adapter or uncertainty "
                       "sampling to a cohort (Dask)")  # fmt: skip
    s.add_argument("cohort", help="glob ('data/*.nii.gz'), folder, or CSV manifest (image[,case])")
    s.add_argument("--out", required=True, help="output folder (created if its parent exists)")
    s.add_argument("--job", required=True, choices=sorted(KINDS),
                   help="; ".join(f"{k}: {v}" for k, v in KINDS.items()))  # fmt: skip
    s.add_argument("--boxes", help="box prompts CSV: case,slice,a0,b0,a1,b1[,label]")
    s.add_argument("--propagate", action="store_true", help="boxes: propagate each box")
    promptable = sorted(n for n, spec in REGISTRY.items() if spec.kind == "promptable")
    s.add_argument("--model", default="litemedsam", choices=promptable, help="boxes: the model")
    s.add_argument("--support", help="support set from --save-support (.npz + .json)")
    s.add_argument("--backend", help=f"incontext: one of {', '.join(BACKENDS)} (default auto); "
                   f"uncertainty: a sampler, {', '.join(list(SAMPLERS)[:2])}, ... "
                   "(default tyche-small)")  # fmt: skip
    s.add_argument("--label", type=int, action="append", help="label value(s) to segment")
    s.add_argument("--ensemble", type=int, default=1, help="incontext: support subsets averaged")
    s.add_argument("--subset", type=int, help="incontext: supports per ensemble member")
    s.add_argument("--k", type=int, default=8, help="uncertainty: samples (default 8)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--adapter", help="adapter file from `fmseg adapt`")
    s.add_argument("--checkpoint", help="weights for models without bundled ones")
    s.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="default 2 (z)")
    add_window(s, "intensity window (default: the adapter's, else each volume's 0.5-99.5 %%)")
    s.add_argument("--device", help="auto (default: each worker's cuda, then mps, then cpu), cpu, "
                   "cuda, cuda:N or mps; checked here only for a local cluster")  # fmt: skip
    d = s.add_argument_group("cluster")
    d.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="an existing Dask scheduler (tcp://host:8786); default: a local cluster",
    )
    d.add_argument(
        "--workers",
        type=int,
        default=2,
        help="local worker processes (default 2; 0: run here without Dask)",
    )
    d.add_argument("--threads-per-worker", type=int, default=1, help="cases at once per worker")
    d.add_argument("--torch-threads", type=int, default=1, help="torch threads per worker")
    d.add_argument(
        "--memory-limit",
        default="auto",
        help="per local worker, e.g. 4GB (default: memory shared among workers)",
    )
    d.add_argument("--no-resume", action="store_true", help="redo cases already done")
    d.add_argument("--summary", help="summary CSV (default OUT/summary.csv)")  # fmt: skip
    s.set_defaults(run=run_cli)


def job_from_args(args: argparse.Namespace) -> JobSpec:
    """The :class:`JobSpec` of the parsed arguments (checked)."""
    job = JobSpec(
        kind=args.job,
        axis=args.axis,
        window=tuple(args.window) if args.window else None,
        model=args.model,
        boxes=args.boxes,
        propagate=args.propagate,
        support=args.support,
        backend=args.backend,
        labels=tuple(args.label) if args.label else None,
        ensemble=args.ensemble,
        subset=args.subset,
        k=args.k,
        seed=args.seed,
        adapter=args.adapter,
        checkpoint=args.checkpoint,
        device=args.device,
        torch_threads=args.torch_threads,
    )
    job.check()
    return job


def run_cli(args: argparse.Namespace) -> int:
    """Run ``fmseg batch``; returns the number of cases done or skipped.

    Raises:
        CliError: Some cases failed (after every other case ran; the summary names them).
    """
    if args.workers < 0 or args.threads_per_worker < 1:
        raise CliError("--workers must be 0 or more and --threads-per-worker 1 or more")
    if args.device and not args.scheduler:  # a remote cluster's workers may have other devices
        try:
            args.device = device_choice(args.device)
        except argparse.ArgumentTypeError as err:
            raise CliError(f"--device {args.device}: {err}") from None
    job = job_from_args(args)
    summary = run(
        args.cohort,
        job,
        args.out,
        print_progress,
        scheduler=args.scheduler,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        resume=not args.no_resume,
        summary=args.summary,
    )
    print(f"\n{summary.describe()}; summary: {summary.path}", file=sys.stderr)
    failed = summary.failed()
    if failed:
        first = failed[0]
        raise CliError(f"{len(failed)} of {len(summary.results)} cases failed (first: "
                       f"{first.case}: {first.error}); see {summary.path}")  # fmt: skip
    return len(summary.results)
