"""A pretrained base network plus its adapters, behind one small interface.

:class:`SamAdapted` wraps a SAM-family model (2D): ``head="box"`` keeps the promptable
decoder (box prompts from the annotation during training), ``head="auto"`` adds a prompt-free
head on the image embedding. :class:`VolumeAdapted` wraps a 3D network exposing
``features(x)`` (HD-BET's U-Net, MONAI backbones) with a new binary head.

Both expose ``parts`` (module-name prefixes of the encoder and decoder) so that methods can be
applied to either, and ``cacheable`` (True when the encoder is frozen, so its outputs can be
computed once and training runs on cached features).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..window import DEFAULT_WINDOW
from . import methods as M
from .heads import build_head


@dataclass(frozen=True)
class AdapterConfig:
    """How to adapt a base model.

    Attributes:
        method: Method string, e.g. ``"decoder"``, ``"lora"``, ``"lora+decoder"``,
            ``"linear-probe"`` (see :data:`fmseg.adapters.methods.METHODS`).
        where: Part the PEFT methods act on: ``"encoder"``, ``"decoder"`` or ``"both"``.
        head: 2D only: ``"box"`` (promptable decoder) or ``"auto"`` (prompt-free head).
            Black-box methods imply ``"auto"``. 3D models always use ``"auto"``.
        rank: LoRA / ARENA rank.
        alpha: LoRA / ARENA scale numerator.
        arena_l1: Weight of the L1 penalty on ARENA's rank vector.
        class_index: Pretrained output class to start the probe from (3D), or None.
        patch: 3D training patch side; inference decodes patch by patch at this size so that
            instance-norm statistics match training (set by the trainer).
    """

    method: str = "decoder"
    where: str = "decoder"
    head: str = "box"
    rank: int = 4
    alpha: float = 8.0
    arena_l1: float = 0.02
    class_index: int | None = None
    patch: int | None = None

    def methods(self) -> tuple[str, ...]:
        """The parsed method names.

        Raises:
            MethodError: Unknown names, or decoder fine-tuning combined with PEFT on the
                decoder (it already trains every decoder weight: use ``where="encoder"``).
        """
        names = M.parse_method(self.method)
        peft = set(names) & set(M.PEFT_METHODS)
        if "decoder" in names and peft and self.where != "encoder":
            raise M.MethodError(
                f"'decoder' already trains the whole decoder; put {'/'.join(sorted(peft))} on "
                "the encoder (where='encoder') to combine them"
            )
        return names

    def resolved_head(self, dims: int) -> str:
        """``"auto"`` for 3D or black-box methods, else :attr:`head`."""
        names = self.methods()
        if dims == 3 or set(names) & set(M.HEAD_METHODS):
            return "auto"
        if self.head not in ("box", "auto"):
            raise M.MethodError(f"head must be 'box' or 'auto', not '{self.head}'")
        on_decoder = "decoder" in names or (
            set(names) & set(M.PEFT_METHODS) and self.where in ("decoder", "both")
        )
        if self.head == "auto" and on_decoder:
            raise M.MethodError(
                "the prompt-free head does not use the mask decoder: train the decoder with "
                "head='box', or use the encoder / a probe with head='auto'"
            )
        return self.head

    def to_dict(self) -> dict:
        """Plain dict for checkpoints."""
        return asdict(self)


class AdaptedModel(nn.Module):
    """Base network ``net`` + optional ``head``; subclasses define the parts and forward."""

    dims = 2
    parts: dict[str, tuple[str, ...]] = {}
    lora_kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d, nn.Conv3d)

    def __init__(self, base_id: str, net: nn.Module, config: AdapterConfig) -> None:
        super().__init__()
        self.base_id = base_id
        self.net = net
        self.config = config
        self.head_kind = config.resolved_head(self.dims)
        self.head: nn.Module | None = None
        self.trainable: dict[str, int] = {}  # parameters per method (set by apply_methods)
        self.fingerprint = ""  # SHA-256 of the base weights (set by build_adapted)
        self.metrics: dict = {}  # training metrics of a loaded adapter file
        self.window = DEFAULT_WINDOW  # 2D: window trained and applied with (3D: z-score)

    def prefixes(self, where: str) -> tuple[str, ...]:
        """Module-name prefixes (inside :attr:`net`) of ``"encoder"``, ``"decoder"``, ``"both"``."""
        if where == "both":
            return self.parts["encoder"] + self.parts["decoder"]
        if where not in self.parts:
            raise M.MethodError(f"where must be 'encoder', 'decoder' or 'both', not '{where}'")
        return self.parts[where]

    @property
    def cacheable(self) -> bool:
        """True when no encoder parameter trains (encoder outputs can be precomputed)."""
        enc = self.prefixes("encoder")
        return not any(p.requires_grad for n, p in self.net.named_parameters() if M._under(n, enc))

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates."""
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors (what an adapter checkpoint stores)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        # clone: on CPU, .cpu() returns the live storage, and a kept "best" state would follow
        # every later optimiser step.
        return {n: t.detach().cpu().clone() for n, t in self.state_dict().items() if n in names}


def apply_methods(model: AdaptedModel, feature_channels: int) -> dict[str, int]:
    """Freeze ``model.net``, then apply each configured method; returns parameters per method."""
    cfg = model.config
    M.freeze(model.net)
    counts: dict[str, int] = {}
    prefixes = model.prefixes(cfg.where)
    for name in cfg.methods():
        if name in M.HEAD_METHODS:
            model.head = build_head(name, feature_channels, model.dims)
            counts[name] = M.trainable_count(model.head)
        elif name == "decoder":
            counts[name] = M.enable_all(model.net, model.prefixes("decoder"))
        elif name == "bitfit":
            counts[name] = M.enable_bitfit(model.net, prefixes)
        elif name == "norm-affine":
            counts[name] = M.enable_norm_affine(model.net, prefixes)
        else:
            targets = M.lora_targets(model.net, prefixes, model.lora_kinds)
            inject = M.inject_lora if name == "lora" else M.inject_arena
            counts[name] = inject(model.net, targets, cfg.rank, cfg.alpha)
    if model.head_kind == "auto" and model.head is None:
        model.head = build_head("linear-probe", feature_channels, model.dims)
        counts["linear-probe"] = M.trainable_count(model.head)
    return counts


class SamAdapted(AdaptedModel):
    """A SAM-family model adapted in 2D; batches are dicts of tensors.

    Batch keys: ``image`` ``(B, 3, S, S)`` or ``embedding`` ``(B, C, h, w)`` (cached, frozen
    encoder), and ``box`` ``(B, 4)`` xyxy in the ``S x S`` frame for ``head="box"``.
    Output: ``(B, 1, S, S)`` logits.
    """

    dims = 2
    parts = {"encoder": ("image_encoder",), "decoder": ("mask_decoder",)}
    lora_kinds = (nn.Linear,)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, C, h, w)`` image embedding."""
        return self.net.image_encoder(image)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Batch dict -> ``(B, 1, S, S)`` logits."""
        emb = batch["embedding"] if "embedding" in batch else self.embed(batch["image"])
        size = self.net.img_size
        if self.head_kind == "auto":
            logits = self.head(emb)
        else:
            logits = self.net.decode(emb, boxes=batch["box"])[0][:, :1]
        if logits.shape[-1] != size:
            logits = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
        return logits


class VolumeAdapted(AdaptedModel):
    """A 3D network with ``features(x)`` (and ideally ``encode``/``decode``) + a binary head.

    Batch keys: ``image`` ``(B, 1, D, H, W)``, or ``levels`` (cached ``encode`` outputs) when
    the encoder is frozen, or ``features`` when the whole network is frozen.
    Output: ``(B, 1, D, H, W)`` logits.
    """

    dims = 3

    def __init__(self, base_id: str, net: nn.Module, config: AdapterConfig) -> None:
        super().__init__(base_id, net, config)
        enc = getattr(net, "ENCODER", None) or net.encoder_names  # HD-BET / MONAI backbones
        dec = getattr(net, "DECODER", None) or net.decoder_names
        self.parts = {"encoder": tuple(enc), "decoder": tuple(dec)}

    @property
    def multiple(self) -> int:
        """What input sides must be multiples of: the network's stride (at least 16)."""
        return max(16, getattr(self.net, "divisor", 16))

    @property
    def frozen_net(self) -> bool:
        """True when no parameter of the base network trains (black-box methods)."""
        return not any(p.requires_grad for p in self.net.parameters())

    def forward(self, batch: dict) -> torch.Tensor:
        """Batch dict -> ``(B, 1, D, H, W)`` logits."""
        if "features" in batch:
            feats = batch["features"]
        elif "levels" in batch:
            feats = self.net.decode(batch["levels"])
        else:
            feats = self.net.features(batch["image"])
        return self.head(feats)


def crop_levels(
    levels: list[torch.Tensor], shape: Sequence[int], corner: Sequence[int], sizes: Sequence[int]
) -> list[torch.Tensor]:
    """The window ``corner : corner + sizes`` of a full-resolution ``shape``, in every level.

    Args:
        levels: Encoder outputs ``(B, C, D / f, H / f, W / f)``, ``f`` a power of 2.
        shape: ``(D, H, W)`` of the input the levels were computed from.
        corner: Window start per side, a multiple of the coarsest level's ``f``.
        sizes: Window size per side.
    """
    out = []
    for t in levels:
        f = shape[-1] // t.shape[-1]
        window = (slice(c // f, (c + p) // f) for c, p in zip(corner, sizes, strict=True))
        out.append(t[(slice(None), slice(None), *window)])
    return out


def decode_by_patches(model: VolumeAdapted, x: torch.Tensor, patch: int) -> torch.Tensor:
    """Logits of a 3D model whose decoder trained on ``patch``-sized crops, patch by patch.

    The encoder runs once on the whole volume (as when its outputs were cached for training);
    the decoder and head run on crops of its outputs on the stride grid, half-overlapping,
    blended with a Gaussian. Instance-norm statistics thus come from patches of the size seen
    in training, not from the whole volume (measured: whole-volume decoding of a decoder
    trained on 32^3 patches predicted no foreground at all).

    Args:
        model: Adapted 3D model with ``net.encode`` / ``net.decode``.
        x: ``(1, 1, D, H, W)`` input, sides multiples of ``model.multiple``.
        patch: Crop side (multiple of ``model.multiple``).
    """
    from .sliding import importance_map, window_starts

    levels = model.net.encode(x)
    shape, grid = x.shape[2:], model.multiple
    sizes = [min(patch, n) for n in shape]
    starts = [window_starts(n, p, 0.5) for n, p in zip(shape, sizes, strict=True)]
    weight = importance_map(sizes, device=x.device)
    out, norm = x.new_zeros((1, 1, *shape)), x.new_zeros(tuple(shape))
    for start in itertools.product(*starts):
        corner = [c // grid * grid for c in start]
        win = tuple(slice(c, c + p) for c, p in zip(corner, sizes, strict=True))
        logits = model({"levels": crop_levels(levels, shape, corner, sizes)})
        out[(0, 0, *win)] += logits[0, 0] * weight
        norm[win] += weight
    return out / norm


def init_probe_from_base(model: VolumeAdapted) -> None:
    """Start a 3D probe from the base's own output layer for ``config.class_index``."""
    k = model.config.class_index
    head = model.head.probe if hasattr(model.head, "probe") else model.head
    if k is not None and hasattr(model.net, "seg_layer"):
        head.init_from_classes(model.net.seg_layer.weight, positive=k, negative=0)
