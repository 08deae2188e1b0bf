"""Batch segmentation of cohorts on ``dask.distributed`` (``fmseg batch`` and notebooks).

``run_iter(cohort, JobSpec(...), out_dir)`` applies box prompts, a support set, an adapter or
uncertainty sampling to every case, one Dask task per case, and yields progress; ``run``
drains it. See ``docs/batch.md``.
"""

from .apply import CaseResult, apply_case, run_case
from .cohort import BoxPrompt, Case, read_box_file, read_cohort
from .job import KINDS, JobSpec
from .runner import run, run_iter
from .summary import BatchSummary

__all__ = [
    "KINDS",
    "BatchSummary",
    "BoxPrompt",
    "Case",
    "CaseResult",
    "JobSpec",
    "apply_case",
    "read_box_file",
    "read_cohort",
    "run",
    "run_case",
    "run_iter",
]
