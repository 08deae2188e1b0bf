"""What a batch applies to every case (:class:`JobSpec`), its outputs and provenance records.

The provenance JSON beside each output says what made it: fmseg version, models and the
SHA-256 of their weights, the adapter or support-set hash, the case's prompts, the window and
the SHA-256 of the input volume and of every output. A case is skipped on a re-run when its
stored record matches the new job on all of these and its outputs still hash the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from ..incontext.factory import BACKENDS, SAMPLERS
from ..io import write_atomic
from ..registry import REGISTRY, weight_sources
from ..weights import sha256_of
from .cohort import Case

__all__ = ["KINDS", "JobSpec", "matches", "outputs_of", "provenance", "write_provenance"]

#: What a batch can apply to each case.
KINDS = {
    "boxes": "box prompts from a CSV file (optionally propagated) with a promptable model",
    "incontext": "a support set (fmseg incontext --save-support) through an in-context backend",
    "adapter": "an adapter from fmseg adapt (prompt-free head or 3D; box head with --boxes)",
    "uncertainty": "K samples from a support set: mean probability, disagreement, total",
}
#: Models each non-registry in-context backend loads (their weights go into the provenance).
_BACKEND_MODELS = {"auto": ("incontext-prior",), "prototype": ("litemedsam-points",)}
PROVENANCE_FORMAT = "fmseg-batch-provenance"


@dataclass(frozen=True)
class JobSpec:
    """One job applied to every case of a cohort (frozen, hashable: the worker cache key).

    Attributes:
        kind: One of :data:`KINDS`.
        axis: Slicing axis.
        window: Explicit ``(low, high)`` intensities, or None (the kind's default).
        model: Promptable registry model (``boxes``).
        boxes: Box-prompt CSV (``boxes``; optional for box-head ``adapter`` jobs).
        propagate: ``boxes``: propagate each box through the volume.
        support: Support set path (``incontext``, ``uncertainty``).
        backend: In-context backend (``incontext``) or sampler (``uncertainty``).
        labels: ``incontext``: label values (None: all); ``uncertainty``: the first one only.
        ensemble, subset: ``incontext`` ensembles (see ``build_backend``).
        k, seed: ``uncertainty`` samples and seed.
        adapter: Adapter file (``adapter``).
        checkpoint: Base weights for models without bundled ones.
        device: Torch device (None: CUDA, then MPS, then CPU).
        tiny: Tiny random-weight models (tests and demos; outputs are meaningless).
        torch_threads: Torch threads per worker thread, so that workers do not fight.
    """

    kind: str
    axis: int = 2
    window: tuple[float, float] | None = None
    model: str = "litemedsam"
    boxes: str | None = None
    propagate: bool = False
    support: str | None = None
    backend: str | None = None
    labels: tuple[int, ...] | None = None
    ensemble: int = 1
    subset: int | None = None
    k: int = 8
    seed: int = 0
    adapter: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    tiny: bool = False
    torch_threads: int = 1

    def check(self) -> None:
        """Refuse an incomplete or contradictory job before anything runs (one-line errors)."""
        if self.kind not in KINDS:
            raise ValueError(f"unknown job kind '{self.kind}'; known: {', '.join(KINDS)}")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, not {self.axis}")
        if self.torch_threads < 1:
            raise ValueError("torch threads must be 1 or more")
        need = {"boxes": ("boxes",), "incontext": ("support",), "uncertainty": ("support",),
                "adapter": ("adapter",)}[self.kind]  # fmt: skip
        for name in need:
            if not getattr(self, name):
                raise ValueError(f"a '{self.kind}' job needs --{name}")
        for name in ("boxes", "support", "adapter", "checkpoint"):
            path = getattr(self, name)
            if path and name == "support":
                path = os.fspath(Path(path).with_suffix(".npz"))
            if path and not Path(path).is_file():
                raise ValueError(f"cannot read {name} '{getattr(self, name)}': file not found")
        if self.kind == "boxes" and self.model not in REGISTRY:
            raise ValueError(f"unknown model '{self.model}'; known: {', '.join(sorted(REGISTRY))}")
        if self.kind == "incontext" and (self.backend or "auto") not in BACKENDS:
            raise ValueError(f"unknown backend '{self.backend}'; known: {', '.join(BACKENDS)}")
        if self.kind == "uncertainty" and (self.backend or "tyche-small") not in SAMPLERS:
            raise ValueError(f"unknown sampler '{self.backend}'; known: {', '.join(SAMPLERS)}")

    def models(self) -> tuple[str, ...]:
        """Registry models the job loads (their weights are recorded)."""
        if self.kind == "boxes":
            return (self.model,)
        if self.kind == "adapter":
            return ()  # the adapter file records its base and the base's SHA-256
        name = self.backend or ("auto" if self.kind == "incontext" else "tyche-small")
        name = name.removesuffix("+tta")
        return _BACKEND_MODELS.get(name, (name,) if name in REGISTRY else ())


def _file_digest(path: str | None) -> str | None:
    return sha256_of(path) if path else None


def _support_digest(path: str | None) -> str | None:
    """One SHA-256 over a support set's ``.npz`` and ``.json``."""
    if not path:
        return None
    h = hashlib.sha256()
    for p in (Path(path).with_suffix(".npz"), Path(path).with_suffix(".json")):
        h.update(bytes.fromhex(sha256_of(p)))
    return h.hexdigest()


def job_record(job: JobSpec) -> dict:
    """The job's part of every provenance record: settings and the hashes of what it reads."""
    weights = {}
    for name in job.models():
        if job.tiny:
            weights[name] = "tiny random weights"
        elif job.checkpoint:
            weights[name] = _file_digest(job.checkpoint)
        else:
            weights[name] = [s.sha256 for s in weight_sources(name)]
    settings = asdict(job)
    for volatile in ("device", "torch_threads", "boxes"):  # where/how fast, not what
        settings.pop(volatile)
    settings["window"] = list(job.window) if job.window else None
    settings["labels"] = list(job.labels) if job.labels else None
    return {
        "fmseg": metadata.version("fmseg"),
        "settings": settings,
        "weights_sha256": weights,
        "adapter_sha256": _file_digest(job.adapter),
        "support_sha256": _support_digest(job.support),
    }


def outputs_of(job: JobSpec, case: Case, out_dir: str | os.PathLike) -> dict[str, Path]:
    """The files a case writes: ``labels`` (or ``mean``, ``disagreement``, ``total``)."""
    d = Path(out_dir)
    if job.kind == "uncertainty":
        return {m: d / f"{case.name}_{m}.nii.gz" for m in ("mean", "disagreement", "total")}
    return {"labels": d / f"{case.name}.nii.gz"}


def provenance_path(case: Case, out_dir: str | os.PathLike) -> Path:
    """``<out_dir>/<case>.json``."""
    return Path(out_dir) / f"{case.name}.json"


def provenance(job_rec: dict, case: Case, image_sha256: str, window: dict) -> dict:
    """The record of one case, before its outputs are hashed in."""
    return {
        "format": PROVENANCE_FORMAT,
        "case": case.name,
        "image": case.image,
        "image_sha256": image_sha256,
        "prompts": [b.to_dict() for b in case.boxes],
        "window": window,
        **job_rec,
    }


def write_provenance(path: Path, record: dict, outputs: dict[str, Path]) -> None:
    """Hash the outputs into ``record`` and write it atomically (after the outputs)."""
    record = {**record, "outputs": {k: {"file": p.name, "sha256": sha256_of(p)}
                                    for k, p in outputs.items()}}  # fmt: skip
    text = json.dumps(record, indent=1, sort_keys=True)
    write_atomic(path, lambda tmp: tmp.write_text(text), ".json")


#: Fields of a stored record that must equal the new job's for the case to be skipped.
_MATCHED = ("format", "fmseg", "settings", "weights_sha256", "adapter_sha256",
            "support_sha256", "image_sha256", "prompts")  # fmt: skip


def matches(job_rec: dict, case: Case, out_dir: str | os.PathLike, job: JobSpec) -> bool:
    """True when the case's stored provenance equals this job's and its outputs are intact."""
    path = provenance_path(case, out_dir)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    image = Path(case.image)
    if not image.is_file():
        return False
    new = provenance(job_rec, case, sha256_of(image), {})
    new = json.loads(json.dumps(new))  # tuples -> lists, as stored
    if any(stored.get(k) != new.get(k) for k in _MATCHED):
        return False
    recorded = stored.get("outputs", {})
    for key, p in outputs_of(job, case, out_dir).items():
        entry = recorded.get(key) or {}
        if not p.is_file() or entry.get("file") != p.name or entry.get("sha256") != sha256_of(p):
            return False
    return True
