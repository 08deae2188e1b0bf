"""Fine-tune LiteMedSAM's prompt encoder and mask decoder for clicks, on cached embeddings.

The image encoder stays frozen: training reads the embeddings cached by
:mod:`fmseg.training.embed_cache` (training split only). Every step draws one prompt mode for
the whole batch, SAM-style:

* ``box``: the ground-truth box with 0-5 px random jitter per side;
* ``clicks``: 1-3 clicks (``--one-click p``: exactly one with extra probability p), the first
  positive inside the object, the next ones corrective clicks simulated on the model's own
  previous prediction;
* ``box+clicks``: a box and 1-5 corrective clicks, simulated one at a time on the model's
  prediction from the box and the clicks so far.

For the iterative modes the previous low-resolution logits are fed back as mask input with
probability ``--mask-prob``. Loss: BCE + soft Dice on the 256x256 low-resolution logits, plus
the MSE of the IoU head.

Data (``--data``): ``corpus`` (default) reads the corpus slices cached in ``--cache``
(:mod:`fmseg.training.corpus_slices`), one target per structure, sampled by group (``ct``,
``mr``, ``brain-atlas``, ``microscopy``, ``synthetic``); ``legacy`` reads the LiTS-117 +
Colin27/AAL slices (groups ``liver``, ``tumour``, ``aal``). ``--group-weights`` overrides the
sampling weight of groups. Usage (not run in CI)::

    python -m fmseg.training.embed_cache                # --data legacy for the old slices
    python -m fmseg.training.train_points --minutes 22 --group-weights ct=0.4 synthetic=0.25
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..interactive.prompts import Box
from . import clicks as ck
from . import corpus_slices as cs
from . import points_recipe as recipe
from .corpus import add_data_argument
from .embed_cache import CACHE_DIR, MIN_PX, CachedSlice, load_cached, slice_targets, training_keys
from .points_recipe import first_clicks, jittered_box, loss_fn, points_tensor, predicted_masks

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "litemedsam_points.pt"
PARTS = ("prompt_encoder.", "mask_decoder.")
MODES = ("box", "clicks", "box+clicks")
LOW = 256
LEGACY_WEIGHTS = {"liver": 0.25, "tumour": 0.25, "aal": 0.5}


@dataclass(frozen=True)
class Target:
    """One training target in the model frame.

    Attributes:
        slice_id: Index into the list of cached embeddings.
        gt: ``(256, 256)`` bool mask in the padded low-resolution model frame.
        box: ``(4,)`` tight xyxy box in slice pixels.
        scale: ``(sx, sy)`` model pixels per slice pixel.
        shape: ``(H, W)`` of the slice.
        group: Sampling group: ``"ct"``, ``"mr"``, ``"brain-atlas"``, ``"microscopy"``,
            ``"synthetic"`` (corpus) or ``"liver"``, ``"tumour"``, ``"aal"`` (legacy).
    """

    slice_id: int
    gt: np.ndarray
    box: np.ndarray
    scale: tuple[float, float]
    shape: tuple[int, int]
    group: str


def make_target(slice_id: int, mask: np.ndarray, cached: CachedSlice, group: str) -> Target | None:
    """A :class:`Target` of a ``(H, W)`` bool mask, or None if it vanishes in the model frame.

    The low-resolution frame is ``4 x`` the embedding side (256 for LiteMedSAM).
    """
    gt = cached.frame.mask_to_model(mask, 4 * cached.features.shape[-1])[0, 0].numpy() > 0
    if not gt.any():
        return None
    b = Box.from_mask(mask)
    box = np.array([b.x0, b.y0, b.x1, b.y1])
    return Target(slice_id, gt, box, cached.frame.scale_xy, cached.label.shape, group)


def slice_training_targets(
    key, cached: CachedSlice, min_px: int = MIN_PX
) -> list[tuple[str, np.ndarray]]:
    """``(group, (H, W) bool mask)`` targets of a cached corpus or legacy slice."""
    if isinstance(key, cs.CorpusSliceKey):
        return cs.entry_targets(cached.label, cached.meta, min_px)
    return slice_targets(key, cached.label, heldout=False, min_px=min_px)


def load_training_set(
    root: Path = CACHE_DIR, data: str = "corpus", keys: list | None = None
) -> tuple[torch.Tensor, dict[str, list[Target]]]:
    """Cached ``(N, C, h, w)`` fp16 embeddings and the targets on them, by group.

    Args:
        root: Embedding cache folder.
        data: ``"corpus"`` (every corpus slice cached in ``root``) or ``"legacy"``.
        keys: Slices to read instead (slices not cached are skipped).

    Returns:
        The embeddings of the slices that have a target, and ``group -> targets``.
    """
    if keys is None:
        keys = cs.cached_keys(root) if data == "corpus" else training_keys()
    feats: list[torch.Tensor] = []
    groups: dict[str, list[Target]] = {g: [] for g in (LEGACY_WEIGHTS if data == "legacy" else ())}
    for key in keys:
        try:
            cached = load_cached(key, root)
        except FileNotFoundError:
            continue
        pairs = slice_training_targets(key, cached)
        made = [t for g, m in pairs if (t := make_target(len(feats), m, cached, g)) is not None]
        for t in made:
            groups.setdefault(t.group, []).append(t)
        if made:  # an embedding without targets would never be drawn: do not hold it
            feats.append(cached.features[0])
    if not feats:
        raise FileNotFoundError(f"no cached training slices with targets in {root}")
    return torch.stack(feats), groups


def simulate_prompts(model, feats, targets, mode, k, use_mask, rng):
    """Prompts for the final (gradient) forward of one step.

    Returns:
        ``points`` (``(B, N, 2)``, ``(B, N)``) or None, ``boxes`` ``(B, 4)`` or None and
        ``mask_in`` ``(B, 1, 256, 256)`` or None.
    """
    boxes, dev = None, feats.device
    if mode != "clicks":
        boxes = torch.from_numpy(np.stack([jittered_box(t, rng) for t in targets])).to(dev)
    if mode == "box":
        return None, boxes, None
    if mode == "clicks":
        clicks = first_clicks(targets, rng)
        rounds = [1] * (k - 1)
    else:
        clicks = [[] for _ in targets]
        rounds = [1] * k
    logits = None
    for n_new in rounds:
        pts = _on(points_tensor(clicks), dev) if any(clicks) else None
        mask_in = logits if use_mask else None
        with torch.no_grad():
            logits = model.decode(feats, pts, boxes, mask_in)[0]
        for cl, t, pred in zip(clicks, targets, predicted_masks(logits, targets), strict=True):
            cl += ck.error_clicks(t.gt, pred, n_new)
    mask_in = logits if (use_mask and logits is not None) else None
    return _on(points_tensor(clicks), dev), boxes, mask_in


def _on(pts: tuple[torch.Tensor, torch.Tensor], dev) -> tuple[torch.Tensor, torch.Tensor]:
    return pts[0].to(dev), pts[1].to(dev)


def sample_batch(
    groups: dict[str, list[Target]], size: int, rng: np.random.Generator, weights: dict[str, float]
) -> list[Target]:
    """``size`` targets, the group of each drawn with ``weights``."""
    names = [g for g in weights if groups.get(g) and weights[g] > 0]
    p = np.array([weights[g] for g in names])
    picks = rng.choice(len(names), size=size, p=p / p.sum())
    return [groups[names[i]][rng.integers(len(groups[names[i]]))] for i in picks]


def save_overlay(model: torch.nn.Module, path: Path, meta: dict) -> None:
    """Write the fp16 prompt-encoder/mask-decoder tensors as ``{"model": ..., "meta": ...}``."""
    state = {
        k: v.detach().half().clone() for k, v in model.state_dict().items() if k.startswith(PARTS)
    }
    tmp = Path(path).with_suffix(".tmp")
    torch.save({"model": state, "meta": meta}, tmp)
    tmp.replace(path)


def lr_at(frac: float, step: int, lr: float, min_lr: float, warmup: int = 15) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay by elapsed-time fraction."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(frac, 1.0)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Train LiteMedSAM's decoder for clicks.")
    p.add_argument("--minutes", type=float, default=22.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--min-lr", type=float, default=2e-5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--base-checkpoint",
        type=Path,
        default=None,
        help="LiteMedSAM tensors to start from instead of the registry's package",
    )
    p.add_argument(
        "--recipe",
        choices=("final", "every-round"),
        default="final",
        help="loss on the last round only (simulated rounds without gradients), or on every "
        "round of the episode (SAM's interactive recipe)",
    )
    p.add_argument(
        "--val-frac",
        type=float,
        default=0.0,
        help="corpus: share of slices held back to validate (1 click, 3 clicks, box)",
    )
    p.add_argument(
        "--mode-probs",
        type=float,
        nargs=3,
        default=(0.25, 0.35, 0.4),
        help="probabilities of box, clicks, box+clicks steps",
    )
    p.add_argument(
        "--one-click",
        type=float,
        default=0.0,
        help="extra probability of 1-click steps in clicks mode",
    )
    p.add_argument("--mask-prob", type=float, default=0.5, help="feed back previous logits")
    p.add_argument("--init", type=Path, default=None, help="start from this overlay")
    p.add_argument("--ckpt-every", type=float, default=120.0, help="seconds between checkpoints")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--log", type=Path, default=CACHE_DIR.parent / "train_points.jsonl")
    add_data_argument(p, "the LiTS-117 + Colin27/AAL slices")
    p.add_argument("--cache", type=Path, default=CACHE_DIR, help="embedding cache folder")
    p.add_argument(
        "--group-weights",
        nargs="+",
        default=[],
        metavar="GROUP=W",
        help="sampling weight per target group (others keep their default)",
    )
    args = p.parse_args(argv)
    args.weights = group_weights(args.data, args.group_weights, p)
    return args


def group_weights(data: str, items: list[str], parser=None) -> dict[str, float]:
    """Default weights of ``data``'s groups, updated with ``GROUP=W`` items."""
    weights = dict(LEGACY_WEIGHTS if data == "legacy" else cs.DEFAULT_WEIGHTS)
    for item in items:
        name, _, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            if parser is None:
                raise
            parser.error(f"--group-weights: expected GROUP=W, got {item!r}")
    return weights


def click_count(mode: str, rng: np.random.Generator, one_click: float = 0.0) -> int:
    """Clicks of one training step for a prompt ``mode``.

    0 for ``box``; uniformly 1-3 for ``clicks`` (exactly 1 with the extra probability
    ``one_click``); uniformly 1-5 for ``box+clicks``.
    """
    if mode == "box":
        return 0
    if mode == "clicks" and rng.random() < one_click:
        return 1
    return int(rng.integers(1, 4 if mode == "clicks" else 6))


def train_step(model, opt, feats_all, groups, args, rng) -> dict:
    """One optimisation step; returns its mode, loss and mean Dice."""
    mode = MODES[rng.choice(3, p=np.array(args.mode_probs) / sum(args.mode_probs))]
    k = click_count(mode, rng, args.one_click)
    targets = sample_batch(groups, args.batch, rng, args.weights)
    dev = torch.device(args.device)
    feats = feats_all[[t.slice_id for t in targets]].to(dev).float()
    gt = torch.from_numpy(np.stack([t.gt for t in targets])[:, None].astype(np.float32)).to(dev)
    use_mask = mode != "box" and rng.random() < args.mask_prob
    if args.recipe == "every-round":
        loss, dice = recipe.iterative_step(model, feats, targets, gt, mode, k, use_mask, rng)
    else:
        pts, boxes, mask_in = simulate_prompts(model, feats, targets, mode, k, use_mask, rng)
        logits, iou = model.decode(feats, pts, boxes, mask_in)
        loss, dice = loss_fn(logits, iou, gt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    return {"mode": f"{mode}{k or ''}", "loss": float(loss.detach()), "dice": float(dice.mean())}


def split_keys(root: Path, data: str, val_frac: float) -> tuple[list | None, list]:
    """Training and validation keys of the cache (``(None, [])``: legacy, no validation)."""
    if data != "corpus" or val_frac <= 0:
        return None, []
    keys = cs.cached_keys(root)
    val = [k for k in keys if recipe.is_validation(k, val_frac)]
    return [k for k in keys if not recipe.is_validation(k, val_frac)], val


def main(argv: list[str] | None = None) -> None:
    """Train, checkpointing the overlay every ``--ckpt-every`` seconds and at the end."""
    from ..registry import load_model
    from ..weights import WeightsSource, apply_state_dict, load_state_dict

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_keys, val_keys = split_keys(args.cache, args.data, args.val_frac)
    feats_all, groups = load_training_set(args.cache, args.data, train_keys)
    feats_all = feats_all.to(args.device)
    val_feats, val_targets = None, []
    if val_keys:
        val_feats, val_groups = load_training_set(args.cache, args.data, val_keys)
        val_targets = [t for ts in val_groups.values() for t in ts]
        print(f"validation: {len(val_feats)} slices, {len(val_targets)} targets", flush=True)
    counts = {g: len(v) for g, v in groups.items()}
    print(f"{len(feats_all)} slices; targets: {counts}; weights: {args.weights}", flush=True)
    if unweighted := [g for g in groups if groups[g] and g not in args.weights]:
        print(f"groups never drawn (no weight): {unweighted}", flush=True)
    model = load_model("litemedsam", checkpoint=args.base_checkpoint, device="cpu").train()
    if args.init is not None:
        state = load_state_dict(WeightsSource("file", str(args.init), key="model"))
        apply_state_dict(model, state, strict=False, what=str(args.init))
    model = model.to(args.device)
    model.image_encoder.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if n.startswith(PARTS)]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    t0 = last_ckpt = time.perf_counter()
    step, log = 0, open(args.log, "a")
    while step < args.max_steps and (elapsed := time.perf_counter() - t0) < args.minutes * 60:
        for g in opt.param_groups:
            g["lr"] = lr_at(elapsed / (args.minutes * 60), step, args.lr, args.min_lr)
        rec = train_step(model, opt, feats_all, groups, args, rng) | {
            "step": step,
            "t": round(elapsed, 1),
        }
        log.write(json.dumps(rec) + "\n")
        log.flush()
        step += 1
        if time.perf_counter() - last_ckpt > args.ckpt_every:
            save_overlay(model, args.out, {"steps": step, "seconds": round(elapsed)})
            last_ckpt = time.perf_counter()
            val = recipe.validate(model, val_feats, val_targets) if val_targets else {}
            log.write(json.dumps({"step": step, "t": round(elapsed, 1), "val": val}) + "\n")
            print(f"step {step} t={elapsed:.0f}s checkpoint {val}", flush=True)
    elapsed = time.perf_counter() - t0
    val = recipe.validate(model, val_feats, val_targets) if val_targets else {}
    meta = {"steps": step, "seconds": round(elapsed), "args": str(args), "val": val}
    save_overlay(model, args.out, meta)
    log.write(json.dumps({"step": step, "t": round(elapsed, 1), "val": val, "final": True}) + "\n")
    print(f"done: {step} steps in {elapsed:.0f} s -> {args.out}; validation {val}", flush=True)


if __name__ == "__main__":
    main()
