"""Per-worker model cache: each worker loads a job's models once, for all its cases.

A module-level dictionary lives once per process, so every Dask worker process (and the
client, for in-process runs) keeps its own copy. The key is the frozen :class:`JobSpec` less
what does not change the models, the size and modification time of the files it reads (a
support set or adapter replaced between two runs on a long-lived cluster is read again), and
the thread: predictors and backends keep small per-call state, so a worker running several
cases at once (``threads_per_worker > 1``) holds one copy per thread.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..registry import load_model, load_tiny
from .job import JobSpec

__all__ = ["clear", "models_for", "set_threads"]

_LOADED: dict[tuple, Any] = {}
_LOCKS: dict[tuple, threading.Lock] = {}
_GUARD = threading.Lock()
_LOADS = [0]  # how many loads this process did (tests read it through loads())


@dataclass
class Models:
    """What one job needs on a worker (the fields its kind uses are set).

    Attributes:
        box: Box predictor (``boxes``).
        backend: In-context backend or sampler (``incontext``, ``uncertainty``).
        support: The loaded support set.
        adapted: The adapted model (``adapter``).
    """

    box: Any = None
    backend: Any = None
    support: Any = None
    adapted: Any = None


def _stamp(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _model_key(job: JobSpec) -> tuple:
    """Equal keys load equal models: the job less per-case settings, its files, the thread."""
    spec = replace(job, axis=0, window=None, boxes=None, propagate=False, labels=None,
                   torch_threads=1)  # fmt: skip
    support = os.fspath(Path(job.support).with_suffix(".npz")) if job.support else None
    files = tuple(_stamp(p) for p in (support, job.adapter, job.checkpoint))
    return spec, files, threading.get_ident()


def _load(job: JobSpec) -> Models:
    if not job.tiny:
        return _build(job, load_model)
    with torch.random.fork_rng(devices=[]):  # every worker builds the same random weights
        torch.manual_seed(job.seed)
        return _build(job, load_tiny)


def _build(job: JobSpec, load) -> Models:
    if job.kind == "boxes":
        from ..interactive.session import registry_predictor

        return Models(box=registry_predictor(job.model, job.checkpoint, job.device, load))
    if job.kind == "adapter":
        from ..adapters.api import load_adapter

        return Models(adapted=load_adapter(job.adapter, None, job.device, job.checkpoint, load))
    from ..incontext import SupportSet
    from ..incontext.factory import build_backend, build_sampler

    support = SupportSet.load(job.support)
    if job.kind == "incontext":
        backend = build_backend(job.backend or "auto", job.device, job.checkpoint,
                                job.ensemble, job.subset, load=load)  # fmt: skip
    else:
        backend = build_sampler(job.backend or "tyche-small", job.k, job.device, job.checkpoint,
                                job.seed, load)  # fmt: skip
    return Models(backend=backend, support=support)


def models_for(job: JobSpec) -> Models:
    """The job's models, loaded on the first call in this process and reused after."""
    key = _model_key(job)
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _LOADED:
            _LOADED[key] = _load(job)
            _LOADS[0] += 1
        return _LOADED[key]


def loads() -> int:
    """How many times this process loaded a job's models (tests check the cache with it)."""
    return _LOADS[0]


def clear() -> None:
    """Forget every loaded model (frees memory between cohorts in a long-lived worker)."""
    with _GUARD:
        _LOADED.clear()
        _LOCKS.clear()


def set_threads(n: int) -> None:
    """Torch intra-op threads of this process (only changed when different)."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
