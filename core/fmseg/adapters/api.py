"""Public adapter API: build, train, save, load and apply adapters of registered base models.

An adapter checkpoint is a small file holding only the trained tensors plus the base model's
registry name and SHA-256, the method and settings, and the training metrics. Loading checks
the base: an adapter trained on other weights is refused with a clear message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..progress import Work
from ..registry import ModelLoader, get_spec, load_model, load_tiny
from ..weights import WeightsError, WeightsSource, resolve, sha256_of
from ..window import Window, WindowLike
from .bases import (
    AdaptedModel,
    AdapterConfig,
    SamAdapted,
    VolumeAdapted,
    apply_methods,
    init_probe_from_base,
)
from .data import Annotation, AnnotationError, grid_mm, slice_samples, volume_sample
from .feeders import SliceFeeder, VolumeFeeder
from .trainer import AdaptResult, TrainSettings, train_iter

FORMAT = "fmseg-adapter/1"
#: Registry kinds adapters can be trained on, and the dimensionality of each.
BASE_DIMS = {"promptable": 2, "volumetric": 3}


class AdapterError(ValueError):
    """An adapter checkpoint that cannot be used (wrong base, wrong format, corrupt)."""


def base_dims(base: str) -> int:
    """2 for promptable (SAM-family) bases, trained slice by slice; 3 for volumetric ones.

    Raises:
        KeyError: Unknown model name.
        AdapterError: A model adapters cannot be trained on.
    """
    kind = get_spec(base).kind
    if kind not in BASE_DIMS:
        raise AdapterError(f"'{base}' is a {kind} model: adapters need a promptable or 3D one")
    return BASE_DIMS[kind]


def base_fingerprint(
    base: str, checkpoint: str | None = None, load: ModelLoader | None = None
) -> str:
    """SHA-256 identifying the base weights (``"tiny-random"`` for :func:`load_tiny` models)."""
    if load is load_tiny:
        return "tiny-random"
    spec = get_spec(base)
    source = WeightsSource("file", str(checkpoint)) if checkpoint else spec.weights
    if source is None:
        raise WeightsError(f"model '{base}' needs a checkpoint file: pass checkpoint=PATH")
    return source.sha256 or sha256_of(resolve(source))


def build_adapted(
    base: str,
    config: AdapterConfig,
    device: str | None = None,
    checkpoint: str | None = None,
    load: ModelLoader | None = None,
) -> AdaptedModel:
    """Load a registered base model and apply ``config``'s methods (adapters untrained)."""
    dims = base_dims(base)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # tiny test bases: the same random weights every time
        net = (load or load_model)(base, checkpoint=checkpoint, device=device)
    if dims == 2:
        model: AdaptedModel = SamAdapted(base, net, config)
        channels = net.mask_decoder.iou_token.embedding_dim
    else:
        model = VolumeAdapted(base, net, config)
        channels = net.feature_channels
    model.trainable = apply_methods(model, channels)
    if isinstance(model, VolumeAdapted):
        init_probe_from_base(model)
    model.fingerprint = base_fingerprint(base, checkpoint, load)
    return model.to(next(net.parameters()).device)


def make_feeder(model: AdaptedModel, annotations: Sequence[Annotation], settings: TrainSettings):
    """The feeder matching ``model`` (2D slices or 3D patches) for ``annotations``."""
    if isinstance(model, SamAdapted):
        norm = get_spec(model.base_id).normalisation  # the encoder's input, as at apply time
        size = model.net.img_size
        samples = slice_samples(annotations, size, window=model.window, normalisation=norm)
        return SliceFeeder(
            model,
            samples,
            settings.val_fraction,
            settings.augment,
            settings.seed,
            disk_cache=settings.cache_embeddings,
        )
    multiple = model.multiple
    samples = [volume_sample(a, grid_mm(model.base_id), multiple) for a in annotations]
    sparse = [a for a in annotations if a.slices is not None]  # the axis matters only here
    axis = sparse[0].axis if sparse else annotations[0].axis
    if any(a.axis != axis for a in sparse):
        raise AnnotationError("annotated slices of all training volumes must lie on one axis")
    return VolumeFeeder(
        model,
        samples,
        axis,
        settings.patch,
        settings.val_fraction,
        settings.augment,
        settings.seed,
        multiple,
    )


def train_adapter_iter(
    annotations: Sequence[Annotation],
    base: str = "litemedsam",
    config: AdapterConfig | None = None,
    settings: TrainSettings | None = None,
    device: str | None = None,
    checkpoint: str | None = None,
    window: WindowLike = None,
    load: ModelLoader | None = None,
) -> Work[AdaptResult]:
    """Train an adapter on annotated images; yields progress, returns :class:`AdaptResult`.

    Args:
        annotations: Image + label + label value (+ annotated slices) per training image.
        base: Registry name of the base model (``litemedsam``, ``hdbet``, ...).
        config: Method and its options (default: decoder fine-tuning).
        settings: Optimisation settings (defaults of :class:`TrainSettings`).
        device: ``"cpu"``, ``"cuda"`` or None.
        checkpoint: Local weights for bases without bundled weights.
        window: 2D bases: intensity window of the training images (None: the default
            0.5-99.5 percentiles of each); kept in the adapter and used to apply it.
        load: How the base network is built (None: :func:`~fmseg.registry.load_model`;
            :func:`~fmseg.registry.load_tiny` in tests).

    Raises:
        AnnotationError: Unusable annotations (message names the problem).
        MethodError: Unknown method.
        TrainingError: NaN loss or nothing to train.
    """
    if not annotations:
        raise ValueError("give at least one annotated image to train on")
    config, settings = config or AdapterConfig(), settings or TrainSettings()
    if base_dims(base) == 3:
        config = replace(config, patch=settings.patch)
    torch.manual_seed(settings.seed)
    model = build_adapted(base, config, device, checkpoint, load)
    model.window = Window.of(window)
    feeder = make_feeder(model, annotations, settings)
    result = yield from train_iter(model, feeder, settings)
    result.trainable = dict(model.trainable)
    return result


def _atomic_save(obj: dict, path: Path) -> None:
    from ..io import write_atomic  # the one atomic writer: temp file, umask's mode, replace

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(obj, tmp), ".part")


def save_adapter(path: str | os.PathLike, model: AdaptedModel, metrics: dict | None = None):
    """Write only the adapter tensors + base identity + config + metrics, atomically."""
    path = Path(path)
    _atomic_save(
        {
            "format": FORMAT,
            "base": model.base_id,
            "base_sha256": model.fingerprint,
            "config": model.config.to_dict(),
            "state": model.adapter_state(),
            "metrics": metrics or {},
            # The policy, not one volume's (low, high): a fixed window (a CT preset in HU)
            # applies as is to any CT, while percentiles were taken per training image and
            # must be taken on each new volume too (MR has no absolute intensity scale).
            "window": model.window.to_dict(),
        },
        path,
    )
    return path


def read_adapter(path: str | os.PathLike) -> dict:
    """Read and check an adapter file's structure (no model is built)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AdapterError(f"adapter file not found: {path}") from None
    except Exception as err:
        raise AdapterError(f"{path} is not a readable adapter checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AdapterError(f"{path} is not an fmseg adapter ({FORMAT}) file")
    return ckpt


def load_adapter(
    path: str | os.PathLike,
    base: str | None = None,
    device: str | None = None,
    checkpoint: str | None = None,
    load: ModelLoader | None = None,
) -> AdaptedModel:
    """Rebuild the adapted model from an adapter file, refusing a mismatching base.

    Args:
        path: Adapter checkpoint.
        base: Base model the caller intends to adapt (None: the one recorded in the file).
        device: Device for the model.
        checkpoint: Local base weights (must be the ones the adapter was trained on).
        load: How the base network is built (None: :func:`~fmseg.registry.load_model`;
            :func:`~fmseg.registry.load_tiny` in tests).

    Raises:
        AdapterError: Another base model or other base weights, or tensors that do not fit.
    """
    ckpt = read_adapter(path)
    if base is not None and base != ckpt["base"]:
        raise AdapterError(f"adapter {path} was trained for '{ckpt['base']}', not for '{base}'")
    fingerprint = base_fingerprint(ckpt["base"], checkpoint, load)
    if fingerprint != ckpt["base_sha256"]:
        raise AdapterError(
            f"adapter {path} was trained on other '{ckpt['base']}' weights "
            f"(sha256 {ckpt['base_sha256'][:12]}..., these are {fingerprint[:12]}...)"
        )
    config = AdapterConfig(**ckpt["config"])
    model = build_adapted(ckpt["base"], config, device, checkpoint, load)
    expected = set(model.adapter_state())
    if set(ckpt["state"]) != expected:
        raise AdapterError(f"adapter {path} does not fit its base model's structure")
    model.load_state_dict(ckpt["state"], strict=False)
    model.metrics = ckpt.get("metrics", {})
    model.window = Window.from_dict(ckpt.get("window"))  # older files: the default they used
    return model.eval()
