"""Run a job over a cohort on ``dask.distributed``: a generator yielding :class:`Progress`.

One task per case; each worker process loads the models once (:mod:`fmseg.batch.cache`);
cases whose provenance and outputs match the job are skipped before anything is submitted;
a failed case (a corrupt file, a box off the image, a killed worker) is a row of the summary
and never stops the others. Closing the generator (a front end's Cancel) cancels the cases
not yet finished; those finished keep their outputs and provenance.

Example (a notebook)::

    from fmseg.batch import JobSpec, run
    job = JobSpec("boxes", boxes="boxes.csv", propagate=True, window=(-160, 240))
    summary = run("cohort/*.nii.gz", job, "out", workers=4)
    print(summary.describe())
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ..progress import Progress, Work, drain
from .apply import CaseResult, run_case
from .cohort import Case, read_box_file, read_cohort
from .job import JobSpec, job_record, matches
from .summary import BatchSummary, write_summary

__all__ = ["run", "run_iter"]


def _attach_boxes(cases: list[Case], job: JobSpec) -> list[Case]:
    if not job.boxes:
        return cases
    boxes = read_box_file(job.boxes)
    return [Case(c.name, c.image, boxes.get(c.name, ())) for c in cases]


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder '{out_dir}' is a file")
    if not out_dir.parent.is_dir():
        raise ValueError(f"output folder '{out_dir}': folder '{out_dir.parent}' does not exist")
    out_dir.mkdir(exist_ok=True)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ValueError(f"output folder '{out_dir}' is not writable")


def _client(scheduler, workers: int, threads: int, memory_limit, processes: bool):
    """``(client, owned)``: a client on ``scheduler`` (an address or a Client) or a new cluster."""
    from distributed import Client, LocalCluster

    if scheduler is not None and not isinstance(scheduler, str):
        return scheduler, False
    if scheduler:
        return Client(scheduler), True
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=processes,
                           memory_limit=memory_limit, dashboard_address=None)  # fmt: skip
    return Client(cluster), True


def _failed(case: Case, err: BaseException) -> CaseResult:
    name = type(err).__name__
    why = "its worker died (killed or out of memory)" if name == "KilledWorker" else str(err)
    return CaseResult(case.name, "failed", error=f"{name}: {' '.join(why.split())}")


def run_iter(
    cohort: str | os.PathLike | list,
    job: JobSpec,
    out_dir: str | os.PathLike,
    *,
    scheduler=None,
    workers: int = 1,
    threads_per_worker: int = 1,
    memory_limit: str | float | None = "auto",
    processes: bool = True,
    resume: bool = True,
    summary: str | os.PathLike | None = None,
) -> Work[BatchSummary]:
    """Apply ``job`` to every case of ``cohort``, yielding progress as cases finish.

    Args:
        cohort: A glob, a folder, a CSV manifest or a list (see :func:`read_cohort`).
        job: What to apply.
        out_dir: Output folder (created if its parent exists): ``<case>.nii.gz`` (or
            ``<case>_mean/_disagreement/_total.nii.gz``), ``<case>.json``, ``summary.csv``.
        scheduler: None (a ``LocalCluster`` started here and closed at the end), a
            scheduler address (``tcp://host:8786``: SSH, Kubernetes, dask-jobqueue) or a
            ``distributed.Client``.
        workers: Worker processes of the local cluster; 0 runs the cases here, one by one,
            without Dask.
        threads_per_worker: Cases each local worker runs at once.
        memory_limit: Memory limit per local worker (``"4GB"``, bytes; ``"auto"``: the
            machine's memory shared among workers); Dask pauses and then restarts a worker
            above it.
        processes: Local workers as processes (True) or threads of this process.
        resume: Skip cases whose provenance matches the job and whose outputs are intact.
        summary: Summary CSV path (default ``out_dir/summary.csv``).

    Returns:
        The :class:`BatchSummary` (also written as the summary CSV, even when cancelled).

    Raises:
        ValueError: A bad job, cohort, box file or output folder (before any case runs).
    """
    t0 = time.perf_counter()
    job.check()
    out = Path(out_dir)
    _check_out_dir(out)
    cases = _attach_boxes(read_cohort(cohort), job)
    results: dict[str, CaseResult] = {}
    todo: list[Case] = []
    rec = job_record(job)
    for i, case in enumerate(cases):
        if resume and matches(rec, case, out, job):
            main = _main_output(job, case, out)
            results[case.name] = CaseResult(case.name, "skipped", output=main)
        else:
            todo.append(case)
        yield Progress(0, len(cases), f"checked {i + 1}/{len(cases)} cases for earlier outputs")
    done = len(results)
    client = owned = None
    futures: dict = {}
    try:
        if todo and workers == 0 and scheduler is None:
            for case in todo:
                results[case.name] = run_case(job, case, out)
                done += 1
                yield Progress(done, len(cases), _message(results[case.name]))
        elif todo:
            from distributed import as_completed

            yield Progress(done, len(cases), "starting workers")
            client, owned = _client(scheduler, workers, threads_per_worker, memory_limit,
                                    processes)  # fmt: skip
            token = uuid.uuid4().hex[:8]
            for case in todo:
                f = client.submit(run_case, job, case, str(out), key=f"fmseg-{case.name}-{token}",
                                  pure=False)  # fmt: skip
                futures[f] = case
            for f in as_completed(list(futures)):
                case = futures.pop(f)
                try:
                    results[case.name] = f.result()
                except Exception as err:  # noqa: BLE001 - a lost case is a row, not the end
                    results[case.name] = _failed(case, err)
                done += 1
                yield Progress(done, len(cases), _message(results[case.name]))
    finally:
        if client is not None and futures:
            client.cancel(list(futures))
        if owned:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
        ordered = [results.get(c.name) or CaseResult(c.name, "failed",
                   error="cancelled before it finished") for c in cases]  # fmt: skip
        path = write_summary(summary or out / "summary.csv", ordered)
    return BatchSummary(ordered, path, time.perf_counter() - t0)


def _main_output(job: JobSpec, case: Case, out: Path) -> str:
    from .job import outputs_of

    outputs = outputs_of(job, case, out)
    return str(outputs.get("labels", outputs.get("mean")))


def _message(r: CaseResult) -> str:
    if r.status == "failed":
        return f"{r.case}: failed ({r.error})"
    return f"{r.case}: {r.status} in {r.seconds:.1f} s"


def run(
    cohort: str | os.PathLike | list,
    job: JobSpec,
    out_dir: str | os.PathLike,
    on_progress: Callable[[Progress], None] | None = None,
    **options,
) -> BatchSummary:
    """:func:`run_iter` to the end (notebooks, scripts); ``options`` as for :func:`run_iter`."""
    return drain(run_iter(cohort, job, out_dir, **options), on_progress)
