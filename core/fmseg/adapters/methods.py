"""Parameter-efficient adaptation methods, each a small function on any ``nn.Module``.

A method string names one or more methods joined by ``+`` (e.g. ``"lora+decoder"``):

* black-box, on frozen features: ``linear-probe`` (1x1 conv head) and ``spatial-adapter``
  (residual conv-ReLU-conv, then the probe); see :mod:`fmseg.adapters.heads`;
* PEFT, on the part of the network chosen by ``where``: ``bitfit`` (biases), ``norm-affine``
  (norm scales and shifts), ``lora`` (peft's LoRA, rank ``r``, B zero-initialised) and
  ``arena`` (adaptive-rank LoRA, ``dW = B diag(v) A`` with an L1 penalty on ``v`` and a proximal
  soft-threshold step, so the effective rank shrinks);
* ``decoder``: every decoder parameter (full decoder fine-tuning).

Every method first leaves the base weights frozen; only the named parameters train.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

METHODS: dict[str, str] = {
    "linear-probe": "1x1 conv head on frozen features (black-box)",
    "spatial-adapter": "residual conv-ReLU-conv on frozen features, then a probe (black-box)",
    "bitfit": "train the biases only",
    "norm-affine": "train the norm layers' scales and shifts",
    "lora": "low-rank update of linear/conv weights (peft)",
    "arena": "adaptive-rank LoRA: B diag(v) A with L1 on v (effective rank shrinks)",
    "decoder": "fine-tune all decoder parameters",
}
HEAD_METHODS = ("linear-probe", "spatial-adapter")
PEFT_METHODS = ("bitfit", "norm-affine", "lora", "arena")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


class MethodError(ValueError):
    """An unknown or contradictory method string."""


def parse_method(text: str) -> tuple[str, ...]:
    """``"lora+decoder"`` -> ``("lora", "decoder")``, validated, in a canonical order.

    Raises:
        MethodError: Unknown names, or both black-box heads at once.
    """
    names = {t.strip().lower() for t in text.split("+") if t.strip()}
    unknown = names - set(METHODS)
    if not names or unknown:
        raise MethodError(
            f"unknown adapter method '{text}'; choose from {', '.join(METHODS)} (join with '+')"
        )
    if set(HEAD_METHODS) <= names:
        raise MethodError("choose one of linear-probe and spatial-adapter, not both")
    return tuple(m for m in METHODS if m in names)


def freeze(module: nn.Module) -> None:
    """Make every parameter of ``module`` non-trainable."""
    for p in module.parameters():
        p.requires_grad_(False)


def trainable_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") or not p for p in prefixes)


def enable_bitfit(module: nn.Module, prefixes: tuple[str, ...] = ("",)) -> int:
    """Unfreeze every bias under ``prefixes``; returns the number of parameters unfrozen."""
    n = 0
    for name, p in module.named_parameters():
        if name.rsplit(".", 1)[-1] == "bias" and _under(name, prefixes):
            p.requires_grad_(True)
            n += p.numel()
    return n


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, _NORMS) or type(m).__name__.lower().startswith(
        ("instancenorm", "layernorm")
    )


def enable_norm_affine(module: nn.Module, prefixes: tuple[str, ...] = ("",)) -> int:
    """Unfreeze the scale and shift of every normalisation layer under ``prefixes``."""
    n = 0
    for name, m in module.named_modules():
        if _is_norm(m) and _under(name, prefixes):
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                if isinstance(p, nn.Parameter):
                    p.requires_grad_(True)
                    n += p.numel()
    return n


def enable_all(module: nn.Module, prefixes: tuple[str, ...] = ("",)) -> int:
    """Unfreeze every parameter under ``prefixes`` (decoder fine-tuning)."""
    n = 0
    for name, p in module.named_parameters():
        if _under(name, prefixes):
            p.requires_grad_(True)
            n += p.numel()
    return n


def lora_targets(
    module: nn.Module,
    prefixes: tuple[str, ...] = ("",),
    kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d, nn.Conv3d),
) -> list[str]:
    """Names of the layers LoRA can wrap under ``prefixes``: linear and ungrouped convs."""
    names = []
    for name, m in module.named_modules():
        if isinstance(m, kinds) and getattr(m, "groups", 1) == 1 and _under(name, prefixes):
            if not isinstance(m, nn.Linear) and min(m.in_channels, m.out_channels) < 2:
                continue
            names.append(name)
    return names


def inject_lora(module: nn.Module, targets: list[str], r: int = 4, alpha: float = 8.0) -> int:
    """Wrap ``targets`` (names inside ``module``) with peft LoRA layers (B zero-initialised).

    1x1x1 ``Conv3d`` layers are skipped: peft 0.21 merges them with its 1x1 ``Conv2d``
    reshape and fails, and merging must work.

    Returns:
        Number of new trainable parameters.

    Raises:
        ImportError: peft is not installed (``pip install peft``).
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except Exception as err:  # ImportError, or a broken transformers/torchvision stack
        raise ImportError(f"LoRA needs the 'peft' package ({err}); pip install peft") from err
    targets = [
        t
        for t in targets
        if not (isinstance(m := module.get_submodule(t), nn.Conv3d) and max(m.kernel_size) == 1)
    ]
    if not targets:
        raise MethodError("no linear/conv layers to put LoRA on")
    before = trainable_count(module)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
    inject_adapter_in_model(config, module)
    return trainable_count(module) - before


class ArenaLoRA(nn.Module):
    """Adaptive-rank LoRA around one linear or conv layer: ``W + s * B diag(v) A``.

    ``A`` is ``(r, in * prod(kernel))``, ``B`` is ``(out, r)`` (zero-initialised, so the wrapped
    layer's output is unchanged at first), ``v`` is ``(r,)`` (ones). An L1 penalty on ``v`` and
    :meth:`prox` (soft-thresholding) drive entries of ``v`` to exactly zero, shrinking the rank.

    Args:
        base: The frozen ``nn.Linear`` / ``nn.Conv2d`` / ``nn.Conv3d``.
        r: Initial rank.
        alpha: Scale numerator (``s = alpha / r``).
    """

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        self.base_layer = base
        fan_in = base.weight[0].numel()
        self.lora_A = nn.Parameter(torch.empty(r, fan_in))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.weight.shape[0], r))
        self.lora_v = nn.Parameter(torch.ones(r))
        self.scale = alpha / r

    def delta_weight(self) -> torch.Tensor:
        """``s * B diag(v) A`` reshaped like the base weight."""
        delta = (self.lora_B * self.lora_v) @ self.lora_A
        return self.scale * delta.view_as(self.base_layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's forward with the updated weight."""
        b = self.base_layer
        w = b.weight + self.delta_weight()
        if isinstance(b, nn.Linear):
            return F.linear(x, w, b.bias)
        conv = F.conv2d if isinstance(b, nn.Conv2d) else F.conv3d
        return conv(x, w, b.bias, b.stride, b.padding, b.dilation, b.groups)

    @torch.no_grad()
    def prox(self, threshold: float) -> None:
        """Soft-threshold ``v`` by ``threshold`` (the proximal step of the L1 penalty)."""
        v = self.lora_v
        v.copy_(torch.sign(v) * torch.clamp(v.abs() - threshold, min=0.0))

    @property
    def rank(self) -> int:
        """Effective rank: the number of non-zero entries of ``v``."""
        return int((self.lora_v != 0).sum())


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def inject_arena(module: nn.Module, targets: list[str], r: int = 8, alpha: float = 16.0) -> int:
    """Wrap ``targets`` with :class:`ArenaLoRA`; returns the new trainable parameter count."""
    if not targets:
        raise MethodError("no linear/conv layers to put ARENA on")
    before = trainable_count(module)
    for name in targets:
        _set_submodule(module, name, ArenaLoRA(module.get_submodule(name), r, alpha))
    return trainable_count(module) - before


def arena_layers(module: nn.Module) -> list[ArenaLoRA]:
    """All ARENA-wrapped layers in ``module``."""
    return [m for m in module.modules() if isinstance(m, ArenaLoRA)]


def arena_l1(module: nn.Module) -> torch.Tensor | float:
    """Sum of ``|v|`` over all ARENA layers (the L1 penalty before its weight)."""
    layers = arena_layers(module)
    return sum(m.lora_v.abs().sum() for m in layers) if layers else 0.0


def arena_prox(module: nn.Module, threshold: float) -> None:
    """Apply the proximal soft-threshold to every ARENA layer."""
    for m in arena_layers(module):
        m.prox(threshold)


def arena_ranks(module: nn.Module) -> list[int]:
    """Effective rank of each ARENA layer, in module order."""
    return [m.rank for m in arena_layers(module)]


@torch.no_grad()
def merge_adapters(module: nn.Module) -> nn.Module:
    """Fold LoRA / ARENA updates into the base weights and remove the wrappers (in place).

    The result has the base model's plain layers and parameter names again, so it runs and
    exports like the original. Returns ``module``.
    """
    for name, m in list(module.named_modules()):
        if isinstance(m, ArenaLoRA):
            m.base_layer.weight += m.delta_weight()
            _set_submodule(module, name, m.base_layer)
        elif hasattr(m, "merge") and hasattr(m, "base_layer") and hasattr(m, "lora_A"):
            m.merge()  # peft LoraLayer
            _set_submodule(module, name, m.get_base_layer())
    return module


def unmerged_names(module: nn.Module) -> Iterable[str]:
    """Names of adapter wrappers still present (empty after :func:`merge_adapters`)."""
    for name, m in module.named_modules():
        if isinstance(m, ArenaLoRA) or (hasattr(m, "base_layer") and hasattr(m, "lora_A")):
            yield name
