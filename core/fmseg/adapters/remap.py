"""Published 3D foundation checkpoints -> the keys of :mod:`fmseg.models.monai3d` backbones.

Formats, with the key names their own loading code uses:

``universal``  SuPreM and the CLIP-Driven Universal Model (``supervised_suprem_swinunetr_2100.pth``,
               ``supervised_suprem_unet_2100.pth``, ``supervised_clip_driven_universal_swin_unetr_
               2100.pth``): ``{"net": {"module.backbone.swinViT.layers1.0.blocks.0.attn.qkv.weight",
               "module.backbone.down_tr64.ops.0.conv1.weight", ..., "module.precls_conv.*",
               "module.GAP.*", "module.controller.*", "module.organ_embedding", ...}}``; the text-
               driven head is dropped (MrGiovanni/SuPreM direct_inference/inference.py,
               ljwztc/CLIP-Driven-Universal-Model model/Universal_model.py).
``fseft``      FSEFT foundation model (jusiro/fewshot-finetuning, main_pretrain.py saves the DDP
               state dict): ``"module.swinViT.*"``, ``"module.decoder1.*"`` and a 29-class
               ``"module.classifier.weight"`` (1x1x1 conv), or ``classifier.final_conv.*`` on its
               UNet3D (models/architectures/*.py, utils/models.py).
``monai-ssl``  Tang et al. self-supervised Swin encoder ``model_swinvit.pt``: ``{"state_dict":
               {"module.patch_embed.proj.weight", "module.layers1.0.blocks.0.mlp.fc1.weight",
               "module.layers1.0.downsample.reduction.weight", ...}}`` -> ``swinViT.*`` with
               ``fc1/fc2`` renamed ``linear1/linear2`` (MONAI ``SwinUNETR.load_from``).
``monai-ssl-head``  A checkpoint of the SSL pre-training model itself (Project-MONAI/
               research-contributions SwinUNETR/Pretrain/models/ssl_head.py): ``swin_vit.*``
               -> ``swinViT.*``; ``rotation_head``, ``contrastive_head``, ``conv`` dropped.
``native``     Already in MONAI SwinUNETR / Genesis UNet3D layout, e.g. the MONAI BTCV model
               (``{"state_dict": {"swinViT.*", ..., "out.conv.conv.weight"}}``) or fmseg's own.

Heads whose shape does not fit (a 32-, 29- or 14-class output layer on a 1-class model) are
dropped and reported; the adapter trainer then starts a fresh head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..weights import WeightsError, WeightsSource, load_state_dict

FORMATS = ("universal", "fseft", "monai-ssl", "monai-ssl-head", "native")
ALIASES = {"suprem": "universal", "clip-driven": "universal", "clipdriven": "universal"}
CONTAINER_KEYS = ("state_dict", "net", "model", "network_weights", "student")
PREFIXES = ("module.", "backbone.", "model.", "net.")
HEAD_NAMES = ("out.conv.conv.", "out_tr.final_conv.")
UNIVERSAL_HEAD = ("precls_conv.", "GAP.", "controller.", "organ_embedding", "text_to_vision.")


@dataclass
class RemapReport:
    """What a checkpoint contributed to a model.

    Attributes:
        format: Detected (or given) checkpoint format.
        loaded: Model key -> checkpoint key, for every tensor copied.
        dropped: Checkpoint key -> why it was not used.
        missing: Model keys left at their initial values.
        encoder_fraction: Share of the model's encoder tensors that were loaded.
    """

    format: str
    loaded: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    encoder_fraction: float = 0.0

    def summary(self) -> str:
        """One line for logs and the GUI."""
        return (
            f"{self.format} checkpoint: {len(self.loaded)} tensors loaded "
            f"({self.encoder_fraction:.0%} of the encoder), {len(self.dropped)} dropped, "
            f"{len(self.missing)} model tensors left as initialised"
        )


def unwrap(state: Mapping) -> dict[str, torch.Tensor | object]:
    """Descend through containers (``state_dict``, ``net``, ``model``, ...) to the tensors."""
    while not _looks_like_state(state):
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    return dict(state)


def _looks_like_state(state: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in state.values())


def detect_format(state: Mapping) -> str:
    """Name the layout of a checkpoint (a state dict or a container holding one).

    Returns:
        One of :data:`FORMATS`, or ``"unknown"``.
    """
    keys = [_strip_prefixes(k) for k in unwrap(state)]
    if any(k.startswith("swin_vit.") for k in keys):
        return "monai-ssl-head"
    if any(k.startswith(UNIVERSAL_HEAD) for k in keys):
        return "universal"
    if any(k.startswith(("layers1.0.", "patch_embed.")) for k in keys):
        return "monai-ssl"
    if any(k.startswith("classifier.") for k in keys):
        return "fseft"
    if any(k.startswith(("swinViT.", "down_tr64.")) for k in keys):
        return "native"
    return "unknown"


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for p in PREFIXES:
            if key.startswith(p):
                key, stripped = key[len(p) :], True
    return key


def _ssl_rename(key: str) -> str:
    key = key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
    return "swinViT." + key


def _fseft_rename(key: str) -> list[str]:
    """FSEFT calls the head ``classifier``: a bare conv on SwinUNETR, ``final_conv`` in UNet3D."""
    if key.startswith("classifier.final_conv."):
        return ["out_tr.final_conv." + key[len("classifier.final_conv.") :]]
    if key.startswith("classifier."):
        return [head + key[len("classifier.") :] for head in HEAD_NAMES]
    return [key]


def _rename_fn(fmt: str) -> Callable[[str], list[str]]:
    """Candidate model keys for one (prefix-stripped) checkpoint key, best first."""
    if fmt == "monai-ssl":
        return lambda k: [_ssl_rename(k)]
    if fmt == "monai-ssl-head":
        return lambda k: [k.replace("swin_vit.", "swinViT.", 1)]
    if fmt == "fseft":
        return _fseft_rename
    return lambda k: [k]


def _encoder_keys(target: Mapping[str, torch.Tensor], prefixes: Iterable[str] | None) -> list[str]:
    if prefixes is None:
        return list(target)
    pre = tuple(p + "." for p in prefixes)
    return [k for k in target if k.startswith(pre)]


def remap_checkpoint(
    state: Mapping,
    target: nn.Module | Mapping[str, torch.Tensor],
    fmt: str | None = None,
    encoder_prefixes: Iterable[str] | None = None,
    min_encoder_fraction: float = 0.5,
) -> tuple[dict[str, torch.Tensor], RemapReport]:
    """Rename a checkpoint's tensors to a model's keys, keeping only those that fit.

    Args:
        state: A state dict or a checkpoint container (``{"net": ...}``, ``{"state_dict": ...}``).
        target: The model, or its ``state_dict()`` (keys and shapes are what matter).
        fmt: One of :data:`FORMATS` (or ``suprem`` / ``clip-driven``); None detects it.
        encoder_prefixes: Child names of the model's encoder; by default the model's
            ``encoder_names``, else all of its keys.
        min_encoder_fraction: Below this share of encoder tensors matched the checkpoint is
            taken to be for another network.

    Returns:
        The tensors to load (model keys) and a :class:`RemapReport`.

    Raises:
        WeightsError: Unknown format name, or too few encoder tensors matched.
    """
    if isinstance(target, nn.Module):
        encoder_prefixes = encoder_prefixes or getattr(target, "encoder_names", None) or None
        target = target.state_dict()
    fmt = ALIASES.get(fmt, fmt) if fmt else detect_format(state)
    if fmt not in (*FORMATS, "unknown"):
        raise WeightsError(f"unknown checkpoint format '{fmt}'; known: {', '.join(FORMATS)}")
    out, report = _match(unwrap(state), target, _rename_fn(fmt), RemapReport(fmt))
    report.missing = [k for k in target if k not in out]
    enc = _encoder_keys(target, encoder_prefixes)
    report.encoder_fraction = sum(k in out for k in enc) / max(len(enc), 1)
    if report.encoder_fraction < min_encoder_fraction:
        raise WeightsError(_mismatch_message(report, enc, len(out)))
    return out, report


def _match(
    state: dict, target: Mapping[str, torch.Tensor], rename: Callable, report: RemapReport
) -> tuple[dict[str, torch.Tensor], RemapReport]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            report.dropped[key] = "not a tensor"
            continue
        base = _strip_prefixes(key)
        names = [n for n in rename(base) if n in target]
        if not names:
            why = (
                "text-driven head of the Universal Model" if base.startswith(UNIVERSAL_HEAD) else ""
            )
            report.dropped[key] = why or "no counterpart in this model"
            continue
        name = names[0]
        if tuple(value.shape) != tuple(target[name].shape):
            report.dropped[key] = (
                f"shape {tuple(value.shape)} does not fit {name} {tuple(target[name].shape)}"
            )
            continue
        out[name] = value.to(target[name].dtype)
        report.loaded[name] = key
    return out, report


def _mismatch_message(report: RemapReport, enc: list[str], n_loaded: int) -> str:
    shapes = [f"{k}: {why}" for k, why in report.dropped.items() if why.startswith("shape")]
    other = [k for k, why in report.dropped.items() if not why.startswith("shape")]
    parts = [
        f"checkpoint mismatch: only {report.encoder_fraction:.0%} of the model's {len(enc)} "
        f"encoder tensors found ({n_loaded} tensors matched in all; format '{report.format}')"
    ]
    if shapes:
        parts.append(f"{len(shapes)} have the wrong shape (e.g. {shapes[0]}): another model size?")
    if other:
        parts.append(f"unmatched checkpoint keys such as {other[0]!r}")
    if enc:
        parts.append(f"the model expects keys such as {enc[0]!r}")
    return "; ".join(parts)


def load_volumetric_checkpoint(
    model: nn.Module,
    path_or_state: str | Path | Mapping,
    fmt: str | None = None,
    min_encoder_fraction: float = 0.5,
) -> RemapReport:
    """Load a SuPreM / CLIP-Driven / FSEFT / MONAI checkpoint into a ``monai3d`` backbone.

    Files are read with ``torch.load(weights_only=True)`` (no pickled code runs). Tensors are
    copied non-strictly: whatever the checkpoint does not provide (e.g. a decoder for SSL
    weights, or a head of another class count) keeps its initial values and is reported.

    Args:
        model: Target backbone (e.g. from :func:`fmseg.models.monai3d.build_swinunetr`).
        path_or_state: A checkpoint file or an already loaded checkpoint.
        fmt: Checkpoint format (see :func:`remap_checkpoint`); None detects it.
        min_encoder_fraction: See :func:`remap_checkpoint`.

    Returns:
        What was loaded, dropped and left missing.

    Raises:
        WeightsError: Unreadable file or a checkpoint for another network.
    """
    if isinstance(path_or_state, Mapping):
        state = path_or_state
    else:
        state = load_state_dict(WeightsSource("file", str(path_or_state)))
    tensors, report = remap_checkpoint(
        state, model, fmt=fmt, min_encoder_fraction=min_encoder_fraction
    )
    model.load_state_dict(tensors, strict=False)
    return report
