"""Apply a job to one case: the single function the CLI, the Python API and Dask tasks run.

:func:`run_case` never raises for a bad case: it returns a :class:`CaseResult` with the error
on one line, so one corrupt file never stops a cohort. Outputs are written atomically, then the
provenance JSON (last: a case killed before it is redone on the next run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..interactive.prompts import PromptError, Prompts
from ..io import Volume, save_labels, save_volume
from ..progress import drain
from ..validation import check_slices
from ..weights import sha256_of
from ..window import Window, intensity_window
from . import cache
from .cohort import Case
from .job import JobSpec, job_record, outputs_of, provenance, provenance_path, write_provenance

__all__ = ["CaseResult", "apply_case", "run_case"]

#: Statuses of a case in the summary.
STATUSES = ("done", "skipped", "failed")


@dataclass(frozen=True)
class CaseResult:
    """What became of one case (one row of the summary CSV).

    Attributes:
        case: Case name.
        status: ``done``, ``skipped`` or ``failed``.
        seconds: Wall time on the worker (0 for skipped cases).
        output: The main output file (labels, or the mean probability), or ``""``.
        error: One line saying what went wrong (failed cases), else ``""``.
    """

    case: str
    status: str
    seconds: float = 0.0
    output: str = ""
    error: str = ""


def _boxes(job: JobSpec, case: Case, vol: Volume, models: cache.Models) -> np.ndarray:
    from ..interactive.session import Session

    if not case.boxes:
        raise ValueError(f"no box for case '{case.name}' in the box file")
    shape = vol.array.shape
    rows, cols = (a for a in range(3) if a != job.axis)
    check_slices([b.slice for b in case.boxes], shape, job.axis)
    session = Session(vol.array, models.box, None, spacing=vol.spacing, window=job.window,
                      name=job.model)  # fmt: skip
    for b in case.boxes:
        prompts = Prompts(box=b.box())
        try:
            prompts.validate((shape[rows], shape[cols]))
        except PromptError:
            raise ValueError(
                f"box {b.a0:g} {b.b0:g} {b.a1:g} {b.b1:g} does not fit slice {b.slice} along axis "
                f"{job.axis} (axis {rows} runs 0..{shape[rows] - 1}, axis {cols} "
                f"0..{shape[cols] - 1})"
            ) from None
        session.set_prompts(job.axis, b.slice, prompts)
        if job.propagate:
            drain(session.propagate_iter(job.axis, b.slice))
        session.commit(b.label)
    return session.labels


def _adapter(job: JobSpec, case: Case, vol: Volume, models: cache.Models) -> np.ndarray:
    from ..adapters.facade import THRESHOLD, apply_iter

    boxes = {b.slice: b.box() for b in case.boxes} or None
    work = apply_iter(models.adapted, vol.array, job.axis, boxes=boxes, spacing=vol.spacing,
                      window=job.window)  # fmt: skip
    label = case.boxes[0].label if case.boxes else 1
    return (drain(work) > THRESHOLD).astype(np.uint16) * label


def _window(job: JobSpec, vol: Volume, models: cache.Models) -> dict:
    """The window policy the case used and the ``(low, high)`` it resolved to."""
    if job.window is None and job.kind == "adapter" and models.adapted.window is not None:
        policy = models.adapted.window
    else:
        policy = Window.of(job.window)
    low, high = intensity_window(vol.array, policy)
    return {"policy": policy.to_dict(), "resolved": [float(low), float(high)]}


def apply_case(job: JobSpec, case: Case, out_dir: str | Path) -> CaseResult:
    """Run the job on one case and write its outputs and provenance; raises on a bad case.

    Args:
        job: The checked job.
        case: The case (its ``boxes`` filled for box jobs).
        out_dir: Existing, writable output folder.

    Returns:
        The ``done`` result with the wall time.
    """
    from ..cli.files import read_volume  # its one-line messages name the file and the problem

    t0 = time.perf_counter()
    cache.set_threads(job.torch_threads)
    vol = read_volume(case.image)
    image_sha = sha256_of(case.image)
    models = cache.models_for(job)
    outputs = outputs_of(job, case, out_dir)
    if job.kind == "boxes":
        save_labels(outputs["labels"], _boxes(job, case, vol, models), vol.affine)
    elif job.kind == "adapter":
        save_labels(outputs["labels"], _adapter(job, case, vol, models), vol.affine)
    elif job.kind == "incontext":
        from ..incontext import segment_volume_iter

        labels = list(job.labels) if job.labels else None
        work = segment_volume_iter(models.backend, models.support, vol.array, job.axis,
                                   job.window, labels)  # fmt: skip
        save_labels(outputs["labels"], drain(work).labels, vol.affine)
    else:
        from .. import uncertainty as U
        from ..incontext import sample_volume_iter

        label = job.labels[0] if job.labels else None
        work = sample_volume_iter(models.backend, models.support, vol.array, job.axis,
                                  job.window, label)  # fmt: skip
        samples = drain(work)
        save_volume(outputs["mean"], U.mean_probability(samples), vol.affine)
        for kind in ("disagreement", "total"):
            save_volume(outputs[kind], U.uncertainty_map(samples, kind), vol.affine)
    record = provenance(job_record(job), case, image_sha, _window(job, vol, models))
    write_provenance(provenance_path(case, out_dir), record, outputs)
    main = outputs.get("labels", outputs.get("mean"))
    return CaseResult(case.name, "done", time.perf_counter() - t0, str(main))


def run_case(job: JobSpec, case: Case, out_dir: str | Path) -> CaseResult:
    """:func:`apply_case` that returns a ``failed`` result instead of raising (the Dask task)."""
    from ..cli.common import CliError, one_line

    t0 = time.perf_counter()
    try:
        return apply_case(job, case, out_dir)
    except MemoryError:
        return CaseResult(case.name, "failed", time.perf_counter() - t0,
                          error="out of memory (raise the memory limit per worker)")  # fmt: skip
    except Exception as err:  # noqa: BLE001 - a bad case is recorded, never stops the cohort
        text = one_line(err)
        if not isinstance(err, (CliError, ValueError, OSError)):
            text = f"{type(err).__name__}: {text}"
        return CaseResult(case.name, "failed", time.perf_counter() - t0, error=text)
