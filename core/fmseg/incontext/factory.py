"""Build an in-context backend by name (models come from the registry)."""

from __future__ import annotations

from pathlib import Path

from ..predictor import SamPredictor
from ..registry import get_spec, load_model
from .backends import Backend, UniverSegBackend
from .baselines import IntensityBackend, InterpolationBackend, NearestBackend
from .prototype import PrototypeBackend

BACKENDS = {
    "incontext-small": "fmseg's own UniverSeg-type network (shipped, trained on CPU)",
    "universeg-v1": "the reference UniverSeg v1 (needs its checkpoint or a download)",
    "prototype": "training-free: LiteMedSAM feature prototypes -> box + point prompts",
    "intensity": "baseline: intensity window fitted on the supports",
    "nearest": "baseline: copy the nearest support slice's mask",
    "interpolation": "baseline: signed-distance interpolation between support slices",
}


def build_backend(
    name: str,
    device: str | None = None,
    tiny: bool = False,
    checkpoint: str | Path | None = None,
    ensemble: int = 1,
    subset: int | None = None,
    prompt_model: str = "litemedsam-points",
) -> Backend:
    """A ready backend.

    Args:
        name: One of :data:`BACKENDS`.
        device: Torch device for network backends (None: CUDA when available).
        tiny: Random tiny networks (tests).
        checkpoint: Weights replacing the registered ones (e.g. ``universeg_v1_nf64_ss64_STA.pt``).
        ensemble: Random support subsets averaged by network backends.
        subset: Supports per ensemble member (None: all).
        prompt_model: Registry entry used by the prototype backend.
    """
    if name in ("incontext-small", "universeg-v1"):
        model = load_model(name, checkpoint=checkpoint, tiny=tiny, device=device)
        return UniverSegBackend(model, ensemble=ensemble, subset=subset)
    if name == "prototype":
        spec = get_spec(prompt_model)
        model = load_model(prompt_model, tiny=tiny, device=device)
        return PrototypeBackend(SamPredictor(model, spec.normalisation))
    simple = {"intensity": IntensityBackend, "nearest": NearestBackend}
    simple["interpolation"] = InterpolationBackend
    if name in simple:
        return simple[name]()
    raise KeyError(f"unknown in-context backend '{name}'; known: {', '.join(BACKENDS)}")
