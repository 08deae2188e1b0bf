"""The adapter decisions front ends need, made once: valid choices, settings, slices, applying.

napari's Adapt widget, the Slicer module and ``fmseg adapt`` call these functions and only
display the answers, so they cannot disagree on which head fits a method (they once did:
napari offered ``where="both"`` with the prompt-free head, which the core refuses).

The valid ``(method, where, head)`` combinations are not a second copy of the rule: they are
read off the core's own checks, :meth:`AdapterConfig.methods` and
:meth:`AdapterConfig.resolved_head`, so that what a front end offers is what training accepts.

Typical use::

    wheres = allowed_wheres(base, method)                  # enable/offer the "PEFT on" choice
    heads = allowed_heads(base, method, where)             # enable/offer the head choice
    config = resolve_config(base, method, where, head)     # None picks the first allowed
    settings = default_settings(method, steps)
    prob = drain(apply_iter(model, volume, axis, spacing=spacing))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from ..interactive.prompts import Box
from ..progress import Work
from ..registry import REGISTRY
from ..window import WindowLike
from .api import BASE_DIMS, base_dims
from .bases import AdaptedModel, AdapterConfig
from .methods import PEFT_METHODS, MethodError, parse_method
from .predict import predict_slices_iter, predict_volume_iter
from .trainer import TrainSettings

__all__ = [
    "HEADS",
    "CPU_TIME_LIMIT",
    "THRESHOLD",
    "WHERES",
    "adapter_bases",
    "allowed_heads",
    "allowed_wheres",
    "apply_iter",
    "base_dims",
    "default_settings",
    "default_time_limit",
    "labelled_slices",
    "resolve_config",
]

#: Parts PEFT methods act on; the first is the default.
WHERES = ("decoder", "encoder", "both")
#: 2D heads; the first is the default where both fit (prompt-free: applying needs no boxes).
HEADS = ("auto", "box")
#: Foreground probability above which a voxel joins the segment.
THRESHOLD = 0.5
#: Default training budget in seconds on CPU (None on a GPU: the step count limits it).
CPU_TIME_LIMIT = 60.0


def adapter_bases() -> tuple[str, ...]:
    """Registry names of the models adapters can be trained on (2D promptable or 3D)."""
    return tuple(name for name, spec in REGISTRY.items() if spec.kind in BASE_DIMS)


def _wheres(method: str) -> tuple[str, ...]:
    """Parts worth offering for ``method``: only the default when it has no PEFT part."""
    if set(parse_method(method)) & set(PEFT_METHODS):
        return WHERES
    return WHERES[:1]  # ``where`` is unused: one value, so front ends show no choice


def _refusal(method: str, where: str, head: str, dims: int) -> str:
    """Why the core would not build ``head`` for this choice ("" when it would)."""
    try:
        built = AdapterConfig(method=method, where=where, head=head).resolved_head(dims)
    except MethodError as err:  # e.g. the prompt-free head with PEFT on the decoder
        return str(err)
    return "" if built == head else f"3D bases and black-box methods use the '{built}' head"


def allowed_heads(base: str, method: str, where: str = "decoder") -> tuple[str, ...]:
    """Heads ``method`` trains with on ``base`` with PEFT on ``where``; the default first.

    A head is allowed when the core builds exactly that head: 3D bases and black-box methods
    are always ``"auto"``; methods that train the mask decoder need ``"box"``.

    Returns:
        The allowed heads; ``()`` when ``where`` itself is not allowed.

    Raises:
        MethodError: Unknown method.
    """
    if where not in _wheres(method):
        return ()
    dims = base_dims(base)
    return tuple(h for h in HEADS if not _refusal(method, where, h, dims))


def allowed_wheres(base: str, method: str, head: str | None = None) -> tuple[str, ...]:
    """Parts ``method``'s PEFT may act on with ``head`` (None: any head); the default first.

    A single entry means there is no choice: methods without a PEFT part ignore ``where``,
    and ``decoder`` combined with PEFT needs ``where="encoder"`` (the core refuses every head
    on the other parts).

    Raises:
        MethodError: Unknown method.
    """
    return tuple(
        w
        for w in _wheres(method)
        if (heads := allowed_heads(base, method, w)) and (head is None or head in heads)
    )


def resolve_config(
    base: str, method: str, where: str | None = None, head: str | None = None, **options
) -> AdapterConfig:
    """The configuration of ``method`` on ``base``, checked against what the core accepts.

    Args:
        base: Registry name of the base model.
        method: Method string of :data:`fmseg.adapters.methods.METHODS` (``+`` combines).
        where: Part PEFT acts on; None: the first of :func:`allowed_wheres`.
        head: 2D head; None: the first of :func:`allowed_heads` for ``where``.
        **options: More :class:`AdapterConfig` fields (``rank``, ``alpha``, ...).

    Raises:
        MethodError: Unknown method, or a ``where`` / ``head`` the core would refuse or
            ignore (the message names the allowed ones).
    """
    wheres = allowed_wheres(base, method)
    where = wheres[0] if where is None else where
    if where not in wheres:
        raise MethodError(f"where='{where}' does not fit '{method}': use {_either(wheres)}")
    heads = allowed_heads(base, method, where)
    head = heads[0] if head is None else head
    if head not in heads:
        raise MethodError(
            f"head='{head}' does not fit '{method}' (where='{where}') on '{base}': use "
            f"{_either(heads)} ({_refusal(method, where, head, base_dims(base))})"
        )
    return AdapterConfig(method=method, where=where, head=head, **options)


def _either(choices: Sequence[str]) -> str:
    return " or ".join(f"'{c}'" for c in choices)


def default_time_limit(device: str | None = None) -> float | None:
    """Seconds of training by default: :data:`CPU_TIME_LIMIT` on CPU, None on a GPU.

    ``device`` None means the device training will pick (CUDA when available).
    """
    import torch

    on_gpu = str(device).startswith("cuda") or (device is None and torch.cuda.is_available())
    return None if on_gpu else CPU_TIME_LIMIT


def default_settings(
    method: str,
    steps: int | None = None,
    lr: float | None = None,
    time_limit: float | None | str = "default",
    device: str | None = None,
    **options,
) -> TrainSettings:
    """Training settings for ``method``: its learning rate, validation about 20 times a run.

    Args:
        method: Method string; its first method's rate is used when ``lr`` is None.
        steps: Maximum steps (None: :class:`TrainSettings`' default).
        lr: Learning rate (None: the method's default, filled in so front ends can show it).
        time_limit: Seconds of training; ``"default"``: :func:`default_time_limit` for
            ``device``; None or 0: no limit.
        device: Device training runs on (picks the default time limit).
        **options: More :class:`TrainSettings` fields; they override the rules here.
    """
    steps = TrainSettings.steps if steps is None else int(steps)
    every = min(10, max(1, steps // 20))
    options.setdefault("eval_every", every)
    # Early stopping after at least 40 steps without progress: short runs validate often,
    # and a patience of a few validations would stop them while the head warms up.
    options.setdefault("patience", max(5, math.ceil(40 / every)))
    if time_limit == "default":
        time_limit = default_time_limit(device)
    options["time_limit"] = float(time_limit) if time_limit else None
    settings = TrainSettings(steps=steps, lr=lr, **options)
    return replace(settings, lr=settings.learning_rate(method))


def labelled_slices(labels: np.ndarray, axis: int, label: int | None = None) -> tuple[int, ...]:
    """Indices along ``axis`` of the slices holding a label: any non-zero, or ``label``.

    These are the annotated slices of sparse training data: on them every other voxel is
    background, the other slices are unknown.
    """
    labels = np.asarray(labels)
    held = labels != 0 if label is None else labels == label
    others = tuple(a for a in range(labels.ndim) if a != axis)
    return tuple(int(i) for i in np.flatnonzero(held.any(axis=others)))


def apply_iter(
    model: AdaptedModel,
    volume: np.ndarray,
    axis: int = 0,
    slices: Sequence[int] | None = None,
    boxes: Mapping[int, Box] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    window: WindowLike = None,
) -> Work[np.ndarray]:
    """Foreground probability of an adapted model on ``volume``; yields progress.

    3D adapters run on the whole volume (``axis``, ``slices`` and ``boxes`` are unused);
    2D adapters run slice by slice along ``axis``, box-head ones on the boxed slices only.

    Args:
        model: Trained or loaded adapted model.
        volume: ``(D0, D1, D2)`` image (or ``(H, W)`` for 2D adapters).
        axis: Slice axis of 2D adapters.
        slices: Slices to run (None: all; with boxes: the boxed ones).
        boxes: Box per slice index; needed by ``head="box"`` adapters.
        spacing: Voxel size per axis (mm).
        window: 2D adapters: an explicit intensity window overriding the one the adapter
            was trained with (None: that one, ``model.window``). 3D adapters z-score the
            volume instead and ignore it.

    Returns:
        ``volume``-shaped float32 probability (0 on slices not run); compare with
        :data:`THRESHOLD`.

    Raises:
        ValueError: A box-head adapter without boxes, or a 2D image for a 3D adapter.
    """
    if model.dims == 3:
        return (yield from predict_volume_iter(model, volume, spacing))
    return (yield from predict_slices_iter(model, volume, axis, slices, boxes, spacing, window))
