"""The few-shot trainer: a generator yielding step, loss and validation Dice (stardist style).

``train_iter(model, feeder, settings)`` runs AdamW on the model's trainable parameters with
a masked soft-Dice + BCE loss, evaluates on held-out annotated slices every few steps, keeps
the best adapter state (early stopping on validation Dice, or on the training loss when too
few slices were annotated to hold some out) and returns an :class:`AdaptResult`. Early
stopping uses the validation loss (soft Dice + BCE), since hard Dice stays at 0 while a
zero-initialised head warms up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..progress import Progress, Work
from . import methods as M
from .bases import AdaptedModel

#: Learning rates that worked on the benchmark structures, per method (first match wins).
DEFAULT_LR = {
    "linear-probe": 1e-2,
    "spatial-adapter": 3e-3,
    "decoder": 1e-4,
    "lora": 1e-3,
    "arena": 1e-3,
    "bitfit": 3e-3,
    "norm-affine": 3e-3,
}


#: The trainer's clock (seconds); tests replace it with a fake one.
clock = time.perf_counter


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN)."""


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings.

    Attributes:
        steps: Maximum optimiser steps.
        lr: Learning rate; None picks :data:`DEFAULT_LR` for the method.
        batch_size: Slices (2D) or patches (3D) per step.
        eval_every: Steps between validations.
        patience: Validations without improvement before stopping early.
        val_fraction: Share of annotated slices held out for validation (when >= 3 slices).
        seed: Seed for sampling, augmentation and initialisation.
        augment: Random intensity/flip/box-jitter augmentation.
        patch: 3D patch side (multiple of 16).
        time_limit: Stop after this many seconds of training (None: no limit); the state
            kept is validated once more when time runs out.
        cache_embeddings: 2D, frozen encoder: keep training-slice embeddings on disk by
            content hash and reuse them in later runs.
    """

    steps: int = 200
    lr: float | None = None
    batch_size: int = 4
    eval_every: int = 10
    patience: int = 5
    val_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    patch: int = 64
    time_limit: float | None = None
    cache_embeddings: bool = True

    def learning_rate(self, method: str) -> float:
        """The configured rate, or the default of the first method named in ``method``."""
        if self.lr is not None:
            return self.lr
        return DEFAULT_LR[M.parse_method(method)[0]]


@dataclass(frozen=True)
class TrainStep(Progress):
    """Progress of one training step.

    Attributes:
        loss: Training loss of this step.
        val_dice: Latest validation Dice (None before the first validation).
    """

    loss: float = math.nan
    val_dice: float | None = None

    def describe(self) -> str:
        """``"step n/N: loss x.xxx, validation Dice y.yyy"``, the wording every front end shows."""
        text = f"step {self.done}/{self.total}: loss {self.loss:.3f}"
        return text if self.val_dice is None else f"{text}, validation Dice {self.val_dice:.3f}"


@dataclass
class AdaptResult:
    """What training produced.

    Attributes:
        model: The adapted model, holding the best state found.
        history: One dict per step: ``step``, ``loss``, ``val_dice`` (or None).
        best_val_dice: Validation Dice of the state kept (None without validation).
        steps_run: Steps actually run.
        wall_s: Training time in seconds (after caching).
        trainable: Trainable parameters per method.
        ranks: ARENA's effective rank per wrapped layer (empty for other methods).
        stopped: Why training ended before ``steps``: ``"time limit"``, ``"early stopping"``
            or ``""`` (all steps run).
    """

    model: AdaptedModel
    history: list[dict] = field(default_factory=list)
    best_val_dice: float | None = None
    steps_run: int = 0
    wall_s: float = 0.0
    trainable: dict[str, int] = field(default_factory=dict)
    ranks: list[int] = field(default_factory=list)
    stopped: str = ""

    def metrics(self) -> dict:
        """Summary numbers for checkpoints and reports."""
        return {
            "best_val_dice": self.best_val_dice,
            "steps_run": self.steps_run,
            "wall_s": round(self.wall_s, 2),
            "trainable": self.trainable,
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "arena_ranks": self.ranks,
            "stopped": self.stopped,
        }


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor):
    """Soft Dice + BCE over the voxels where ``weight`` > 0; all ``(B, 1, *S)``."""
    w = weight
    n = w.sum().clamp_min(1.0)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum() / n
    p = torch.sigmoid(logits) * w
    dims = tuple(range(1, logits.ndim))
    inter = (p * target).sum(dims)
    denom = p.sum(dims) + (target * w).sum(dims)
    soft_dice = 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()
    return soft_dice + bce


def hard_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    """Dice of ``logits > 0`` against ``target`` on the weighted voxels, pooled over the batch."""
    pred = (logits > 0).float() * weight
    t = target * weight
    s = float(pred.sum() + t.sum())
    return 1.0 if s == 0 else 2.0 * float((pred * t).sum()) / s


def _validate(model: AdaptedModel, feeder) -> tuple[float, float] | None:
    """Validation ``(Dice, loss)`` on the held-out slices, or None without any."""
    batches = feeder.validation_batches()
    if not batches:
        return None
    with torch.no_grad():
        outs = [(model(b), b["target"], b["weight"]) for b in batches]
    logits, target, weight = (torch.cat([o[i] for o in outs]) for i in range(3))
    return hard_dice(logits, target, weight), float(dice_bce_loss(logits, target, weight))


def _step(model, feeder, optimiser, settings, gen) -> float:
    batch = feeder.batch(settings.batch_size, gen)
    logits = model(batch)
    loss = dice_bce_loss(logits, batch["target"], batch["weight"])
    l1 = M.arena_l1(model)
    total = loss + model.config.arena_l1 * l1 if torch.is_tensor(l1) else loss
    if not torch.isfinite(total):
        raise TrainingError(
            "the loss became NaN/inf: lower the learning rate or check the image intensities"
        )
    optimiser.zero_grad(set_to_none=True)
    total.backward()
    optimiser.step()
    lr = optimiser.param_groups[0]["lr"]
    M.arena_prox(model, lr * model.config.arena_l1)
    return loss.item()


def _param_groups(model: AdaptedModel, settings: TrainSettings) -> list[dict]:
    """The method's parameters at its rate; a new head (3D, auto) at a head's own rate.

    A zero-initialised head next to a fine-tuned decoder learns far too slowly at the
    decoder's rate (measured on HD-BET: no foreground after 48 steps at 1e-4), so the head
    gets the probe's default rate unless the method itself is a head.
    """
    names = model.config.methods()
    lr = settings.learning_rate(model.config.method)
    head = [p for p in model.head.parameters() if p.requires_grad] if model.head else []
    ids = {id(p) for p in head}
    rest = [p for p in model.trainable_parameters() if id(p) not in ids]
    head_lr = lr if names[0] in M.HEAD_METHODS else DEFAULT_LR["linear-probe"]
    groups = ({"params": rest, "lr": lr}, {"params": head, "lr": head_lr})
    return [g for g in groups if g["params"]]


def train_iter(model: AdaptedModel, feeder, settings: TrainSettings) -> Work:
    """Train ``model``'s adapter on ``feeder``'s data; yields :class:`TrainStep`.

    Args:
        model: Adapted model with its methods applied (only adapter parameters trainable).
        feeder: A :class:`~fmseg.adapters.feeders.SliceFeeder` or ``VolumeFeeder`` (its
            ``prepare()`` generator has run or runs here first).
        settings: Optimisation settings.

    Returns:
        :class:`AdaptResult` with the best state loaded into ``model``.
    """
    torch.manual_seed(settings.seed)
    yield from feeder.prepare()
    if not model.trainable_parameters():
        raise TrainingError("nothing to train: the method left every parameter frozen")
    optimiser = torch.optim.AdamW(_param_groups(model, settings), weight_decay=0.0)
    gen = torch.Generator().manual_seed(settings.seed)
    result = AdaptResult(model)
    best, best_state, stale, val, kept_dice = -math.inf, model.adapter_state(), 0, None, None
    start = clock()
    model.eval()  # the base stays in eval mode: norm statistics must not change

    def check(loss: float) -> float | None:
        nonlocal best, best_state, stale, kept_dice
        checked = _validate(model, feeder)
        # Early stopping on the validation loss: Dice is flat at 0 while a head warms up.
        score = -checked[1] if checked is not None else -loss
        if score > best:
            best, best_state, stale = score, model.adapter_state(), 0
            kept_dice = None if checked is None else checked[0]
        else:
            stale += 1
        return None if checked is None else checked[0]

    for step in range(1, settings.steps + 1):
        loss = _step(model, feeder, optimiser, settings, gen)
        out_of_time = bool(settings.time_limit) and clock() - start > settings.time_limit
        if step % settings.eval_every == 0 or step == settings.steps or out_of_time:
            val = check(loss)  # also when time runs out: the last steps count
        result.history.append({"step": step, "loss": loss, "val_dice": val})
        result.steps_run = step
        yield TrainStep(step, settings.steps, f"step {step}: loss {loss:.3f}", loss, val)
        if stale >= settings.patience or out_of_time:
            result.stopped = "time limit" if out_of_time else "early stopping"
            break
    model.load_state_dict(best_state, strict=False)
    result.wall_s = clock() - start
    result.best_val_dice = kept_dice
    result.ranks = M.arena_ranks(model)
    return result
