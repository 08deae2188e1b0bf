"""Apply an adapted model to new images: 2D slice by slice, or 3D on the model's grid."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..interactive.predictor import normalise
from ..interactive.prompts import Box
from ..progress import Progress, Work
from ..registry import get_spec
from ..transforms import SliceFrame, prepare_slice
from ..validation import check_volume
from ..window import WindowLike, intensity_window
from .bases import AdaptedModel, SamAdapted, decode_by_patches
from .data import grid_mm, to_model_grid
from .embed_store import embedder_of
from .sliding import pad_to_multiple, sliding_window_iter


def _embedder(model: SamAdapted):
    """``(slice, window, spacing) -> (batch, frame)``; a frozen encoder runs on the fast path.

    With the image encoder untouched by the adapter, embeddings come from the model's
    :class:`~fmseg.adapters.embed_store.SliceEmbedder` (content-hash cache in front of the
    interactive fast path): slices embedded for training, or by an earlier apply of the same
    model, are not embedded again. Otherwise the adapted encoder runs in torch.
    """
    if model.cacheable:
        embedder = embedder_of(model)

        def fast(img, window, sp):
            x, frame = embedder.predictor.preprocess(img, window, sp)
            return {"embedding": embedder(x)}, frame

        return fast

    def plain(img, window, sp):
        frame = SliceFrame.for_slice(img.shape, sp, model.net.img_size)
        x = normalise(prepare_slice(img, window, frame), get_spec(model.base_id).normalisation)
        return {"image": x.to(model.device)}, frame

    return plain


def predict_slices_iter(
    model: SamAdapted,
    volume: np.ndarray,
    axis: int = 0,
    slices: Iterable[int] | None = None,
    boxes: Mapping[int, Box] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    window: WindowLike = None,
) -> Work[np.ndarray]:
    """Probabilities of a 2D adapted model on slices of ``volume``; yields progress.

    Args:
        model: Adapted SAM-family model.
        volume: ``(D0, D1, D2)`` image.
        axis: Slice axis.
        slices: Slice indices (None: every slice; with boxes: the boxed slices).
        boxes: Box per slice index (needed for ``head="box"`` adapters; slices without a
            box stay 0).
        spacing: Voxel size per axis.
        window: Intensity window overriding the one the adapter was trained with
            (``model.window``, the default); resolved on ``volume``.

    Returns:
        ``(D0, D1, D2)`` float32 foreground probability (0 on slices not run).
    """
    volume = check_volume(volume)
    volume = volume[None] if volume.ndim == 2 else volume
    if model.head_kind == "box" and not boxes:
        raise ValueError("this adapter keeps the box-prompted decoder: give a box per slice")
    todo = sorted(boxes) if slices is None and boxes else list(slices or range(volume.shape[axis]))
    window = intensity_window(volume, model.window if window is None else window)
    sp = tuple(s for i, s in enumerate(spacing) if i != axis)
    embed = _embedder(model)
    prob = np.zeros(volume.shape, np.float32)
    for n, s in enumerate(todo):
        if model.head_kind == "box" and s not in boxes:
            continue
        batch, frame = embed(np.take(volume, s, axis), window, sp)
        if model.head_kind == "box":
            batch["box"] = torch.from_numpy(frame.box_to_model(boxes[s]))[None].to(model.device)
        with torch.inference_mode():
            p = torch.sigmoid(frame.logits_to_slice(model(batch).float()))[0, 0]
        prob[(slice(None),) * axis + (s,)] = p.cpu().numpy()
        yield Progress(n + 1, len(todo), f"slice {s}")
    return prob


def predict_volume_iter(
    model: AdaptedModel,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    grid: float | None = None,
    patch: tuple[int, int, int] | None = None,
) -> Work[np.ndarray]:
    """Probabilities of a 3D adapted model on a whole volume (on its base's grid).

    Args:
        model: Adapted 3D model.
        volume: ``(D0, D1, D2)`` image.
        spacing: Voxel size per axis (mm).
        grid: Isotropic spacing (mm) to run the network at; None: the one its base expects.
        patch: Sliding-window size (Gaussian blending, 25 % overlap) for black-box adapters;
            None uses the base's ``patch_size`` if it has one (MONAI backbones), else one
            whole-volume pass (HD-BET was built for whole volumes). Adapters that trained the
            network itself run at their training patch size (see :func:`decode_by_patches`).

    Returns:
        ``volume``-shaped float32 foreground probability.
    """
    volume = check_volume(volume)
    if volume.ndim != 3:
        raise ValueError(f"3D adapters need a 3D volume, got shape {volume.shape}")
    yield Progress(0, 1, "resampling")
    x = to_model_grid(volume, spacing, grid or grid_mm(model.base_id)).to(model.device)
    shape = x.shape[2:]
    patch = patch or getattr(model.net, "patch_size", None)
    trained = model.config.patch if not model.frozen_net else None
    if trained and model.cacheable and hasattr(model.net, "encode"):
        with torch.inference_mode():  # encoder on the volume, decoder on training-size patches
            padded = pad_to_multiple(x, model.multiple, "replicate")[0]
            logits = decode_by_patches(model, padded, trained)
        yield Progress(1, 1, "network")
    elif trained:  # the encoder trained on image crops too: slide over the image
        cube = (trained,) * 3
        logits = yield from sliding_window_iter(lambda t: model({"image": t}), x, cube, 0.5)
    elif patch is None:
        with torch.inference_mode():
            logits = model({"image": pad_to_multiple(x, model.multiple, "replicate")[0]})
        yield Progress(1, 1, "network")
    else:
        logits = yield from sliding_window_iter(lambda t: model({"image": t}), x, patch)
    logits = logits[..., : shape[0], : shape[1], : shape[2]].float().cpu()
    logits = F.interpolate(logits, volume.shape, mode="trilinear")
    return torch.sigmoid(logits)[0, 0].numpy()
