"""Build an in-context backend by name (models come from the registry)."""

from __future__ import annotations

from pathlib import Path

from ..calibration import stored_calibration
from ..interactive.predictor import SamPredictor
from ..registry import ModelLoader, get_spec, load_model
from .auto import AutoBackend
from .backends import Backend, UniverSegBackend
from .baselines import IntensityBackend, InterpolationBackend, NearestBackend
from .prior_backend import FittedInterpolationBackend, PriorBackend
from .prototype import PrototypeBackend
from .stochastic import AugmentedSampler, TycheBackend

TRAINED_SUPPORT = 8  # largest support set in incontext-small's training episodes

BACKENDS = {
    "auto": "per query: the prior network where annotated slices of the same volume bracket or "
    "neighbour it, plain in-context elsewhere (the default)",
    "incontext-prior": "fmseg's network seeing supports, the interpolated prior and clicks",
    "incontext-small": "fmseg's own UniverSeg-type network (shipped, trained on CPU)",
    "universeg-v1": "the reference UniverSeg v1 (needs its checkpoint or a download)",
    "prototype": "training-free: LiteMedSAM feature prototypes -> box + point prompts",
    "intensity": "baseline: intensity window fitted on the supports",
    "nearest": "baseline: copy the nearest support slice's mask",
    "interpolation": "baseline: signed-distance interpolation between support slices",
    "interpolation-fitted": "baseline: interpolation with a rule fitted on training data",
}
DEFAULT_BACKEND = "auto"


def build_backend(
    name: str,
    device: str | None = None,
    checkpoint: str | Path | None = None,
    ensemble: int = 1,
    subset: int | None = None,
    prompt_model: str = "litemedsam-points",
    load: ModelLoader = load_model,
) -> Backend:
    """A ready backend.

    Args:
        name: One of :data:`BACKENDS`.
        device: Torch device for network backends (None: CUDA when available).
        checkpoint: Weights replacing the registered ones (e.g. ``universeg_v1_nf64_ss64_STA.pt``).
        ensemble: Random support subsets averaged by network backends.
        subset: Supports per ensemble member (None: all; ``incontext-small``: 8, the most
            it was trained with).
        prompt_model: Registry entry used by the prototype backend.
        load: How networks are built (:func:`~fmseg.registry.load_tiny` in tests).
    """
    if name in ("incontext-small", "universeg-v1"):
        model = load(name, checkpoint=checkpoint, device=device)
        if subset is None and name == "incontext-small":
            subset = TRAINED_SUPPORT  # never more supports per pass than it was trained with
        return UniverSegBackend(model, ensemble=ensemble, subset=subset)
    if name in ("auto", "incontext-prior"):
        prior = PriorBackend(load("incontext-prior", checkpoint=checkpoint, device=device))
        return AutoBackend(prior) if name == "auto" else prior
    if name == "prototype":
        spec = get_spec(prompt_model)
        model = load(prompt_model, device=device)
        return PrototypeBackend(SamPredictor(model, spec.normalisation))
    simple = {"intensity": IntensityBackend, "nearest": NearestBackend}
    simple["interpolation"] = InterpolationBackend
    simple["interpolation-fitted"] = FittedInterpolationBackend
    if name in simple:
        return simple[name]()
    raise KeyError(f"unknown in-context backend '{name}'; known: {', '.join(BACKENDS)}")


SAMPLERS = {
    "tyche-small": "fmseg's Tyche-TS network: K candidates in one pass",
    "tyche-v1": "the reference Tyche-TS v1 (needs its checkpoint or a download)",
    **{f"{name}+tta": f"{desc}; K runs on perturbed inputs" for name, desc in BACKENDS.items()},
}


def build_sampler(
    name: str,
    k: int = 8,
    device: str | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    load: ModelLoader = load_model,
) -> TycheBackend | AugmentedSampler:
    """A sampler of ``k`` plausible segmentations.

    Args:
        name: ``tyche-small``, ``tyche-v1``, or ``<backend>+tta`` for test-time augmentation
            of any :data:`BACKENDS` entry (e.g. ``incontext-small+tta``).
        k: Samples per query.
        device: Torch device (None: CUDA when available).
        checkpoint: Weights replacing the registered ones.
        seed: Seed of the noise / perturbations.
        load: How networks are built (:func:`~fmseg.registry.load_tiny` in tests).
    """
    if name in ("tyche-small", "tyche-v1"):
        model = load(name, checkpoint=checkpoint, device=device)
        return TycheBackend(model, k=k, seed=seed, calibration=_calibration(name, checkpoint, load))
    if name.endswith("+tta") and name[:-4] in BACKENDS:
        base = build_backend(name[:-4], device=device, checkpoint=checkpoint, load=load)
        return AugmentedSampler(base, k=k, seed=seed)
    raise KeyError(f"unknown sampler '{name}'; known: {', '.join(SAMPLERS)}")


def _calibration(name: str, checkpoint: str | Path | None, load: ModelLoader) -> dict | None:
    """The calibration stored with real weights (``meta["calibration"]``); None for tiny nets."""
    if load is not load_model:
        return None
    src = get_spec(name).weights
    if checkpoint is None and (src is None or src.kind != "file"):
        return None
    return stored_calibration(checkpoint or src.location)
