"""Meta-train fmseg's own in-context models (UniverSeg-type or Tyche) on episodic tasks.

Never run in CI.

Each step draws a batch of episodes (support size shared in the batch, 1-8) from the training
corpus (:mod:`fmseg.training.episodes`; ``--data legacy``: the first training set), augments them
(task-level flips/rotations/intensity inversion applied to the whole episode; per-image
affine, contrast and noise), and minimises soft Dice + BCE of the query prediction. With
``--arch tyche`` the network draws ``--k`` candidates and only the best one against a
simulated rater's version of the query mask is penalised: ``--rater ambiguity`` (default;
boundary jitter, merges with a neighbouring label, left-out parts, with probability
``--ambiguity``; :mod:`fmseg.training.ambiguity`) or ``--rater growshrink`` (the first
recipe: grown/shrunk by 0-3 px).
Validation episodes (held-out AAL structures; LiTS liver from the half never trained on)
are scored every ``--eval-every`` seconds into the JSON-lines curve. Usage::

    python -m fmseg.training.train_incontext --minutes 60 --out universeg_small.pt
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..models.tyche import TycheTS
from ..models.universeg import UniverSeg
from . import incontext_data as D
from .ambiguity import Ambiguity, RaterEpisodes, perturb_query
from .corpus import add_data_argument
from .episodes import Mix
from .resume import load_resume, save_resume

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "incontext_small.pt"


def task_augment(si, sm, qi, qm, rng: np.random.Generator):
    """The same flip / rot90 / inversion for every image of one episode."""
    k = int(rng.integers(4))
    flip = rng.random() < 0.5
    invert = rng.random() < 0.15
    out = []
    for t in (si, sm, qi, qm):
        t = torch.rot90(t, k, dims=(-2, -1))
        out.append(torch.flip(t, dims=(-1,)) if flip else t)
    if invert:
        out[0], out[2] = 1 - out[0], 1 - out[2]
    return out


def image_augment(img: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, p: float):
    """Per-image affine, contrast/brightness and noise on ``(N, 1, H, W)`` stacks."""
    n = img.shape[0]
    ang = torch.from_numpy(rng.uniform(-0.25, 0.25, n)).float()
    scale = torch.from_numpy(rng.uniform(0.85, 1.15, n)).float()
    shift = torch.from_numpy(rng.uniform(-0.08, 0.08, (n, 2))).float()
    apply = torch.from_numpy(rng.random(n) < p)
    ang, scale = ang * apply, torch.where(apply, scale, torch.ones_like(scale))
    shift = shift * apply[:, None]
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    img = F.grid_sample(img, grid, align_corners=False, padding_mode="border")
    mask = (F.grid_sample(mask, grid, align_corners=False) > 0.5).float()
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 1, 1, 1))).float()
    bias = torch.from_numpy(rng.uniform(-0.1, 0.1, (n, 1, 1, 1))).float()
    noise = torch.randn_like(img) * torch.from_numpy(rng.uniform(0, 0.03, (n, 1, 1, 1))).float()
    return (img * gain + bias + noise).clamp(0, 1), mask


def legacy_episode(tasks, groups, n_support: int, rng: np.random.Generator):
    """One episode of the first training set (Colin27/AAL, LiTS-117 and ellipses)."""
    group = rng.choice(list(groups), p=list(groups.values()))
    if group == "synthetic":
        task = D.synthetic_task(rng, n_support + 3)
    else:
        task = tasks[group][int(rng.integers(len(tasks[group])))]
    return D.sample_episode(task, n_support, rng)


def make_batch(draw, batch: int, rng: np.random.Generator):
    """A batch of augmented episodes: ``(B, S, 1, H, W)`` x2, ``(B, 1, H, W)`` x2.

    Args:
        draw: ``draw(n_support, rng) -> (si, sm, qi, qm)`` one raw episode (the corpus's
            :meth:`~fmseg.training.episodes.EpisodeSampler.episode`, or :func:`legacy_episode`).
        batch: Episodes per batch.
        rng: Random generator (support size, episodes, augmentation).
    """
    n_support = int(rng.choice([1, 2, 4, 8], p=[0.15, 0.2, 0.3, 0.35]))
    eps = []
    for _ in range(batch):
        si, sm, qi, qm = task_augment(*draw(n_support, rng), rng)
        imgs, masks = image_augment(
            torch.cat([si, qi[None]]), torch.cat([sm, qm[None]]), rng, p=0.7
        )
        eps.append((imgs[:-1], masks[:-1], imgs[-1], masks[-1]))
    return [torch.stack(x) for x in zip(*eps, strict=True)]


def rater_variant(mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Another plausible annotation of ``(B, 1, H, W)`` masks: each grown or shrunk by 0-3 px.

    Stands in for inter-rater variation at boundaries when training Tyche (the data has one
    annotation per structure).
    """
    out = []
    for m in mask:
        r = int(rng.integers(-3, 4))
        if r > 0:
            m = F.max_pool2d(m[None], 2 * r + 1, 1, r)[0]
        elif r < 0:
            m = 1 - F.max_pool2d(1 - m[None], 2 * -r + 1, 1, -r)[0]
        out.append(m)
    return torch.stack(out)


def best_candidate_loss(logits: torch.Tensor, target: torch.Tensor):
    """Tyche loss: per episode the best of K candidates; ``(B, K, H, W)`` vs ``(B, 1, H, W)``."""
    b, k = logits.shape[:2]
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    dice = (2 * (p * t).sum(2) + 1) / (p.sum(2) + t.sum(2) + 1)  # (B, K)
    bce = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    per = (1 - dice) + bce.flatten(2).mean(2)
    best = per.argmin(1)
    return per[torch.arange(b), best].mean(), dice[torch.arange(b), best].mean()


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft Dice (per image, smoothed so empty targets count) + BCE; returns (loss, dice)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return (1 - dice).mean() + bce, dice.mean()


def validation_set(rng: np.random.Generator) -> list[tuple]:
    """Fixed held-out episodes (8 supports): 10 AAL structures + LiTS liver, z >= 64."""
    eps = []
    for task in [t for t in D.aal_tasks(held_out=True) if t.name.endswith("_a2")]:
        eps += [(task.name, *D.sample_episode(task, 8, rng, empty_p=0)) for _ in range(3)]
    ct, lab = D.lits_volume()
    imgs, labs = (
        D.resize_stack(ct[D.LITS_SPLIT :], "bilinear"),
        D.resize_stack(lab[D.LITS_SPLIT :], "nearest"),
    )
    liver = D.Task("liver_eval", imgs, labs > 0)
    eps += [(liver.name, *D.sample_episode(liver, 8, rng, empty_p=0)) for _ in range(12)]
    return eps


@torch.no_grad()
def evaluate(model: UniverSeg, eps: list[tuple]) -> dict[str, float]:
    """Mean hard Dice over the validation episodes, overall and for liver.

    For Tyche: Dice of the mean of 4 candidates, and as ``best`` / ``best_liver`` the
    best-candidate Dice of 8 candidates.
    """
    model.eval()
    scores: dict[str, list[float]] = {}
    for name, si, sm, qi, qm in eps:
        if isinstance(model, TycheTS):
            noise = torch.randn(1, 8, 1, *qi.shape[-2:], generator=torch.Generator().manual_seed(0))
            logits = model(qi[None], si[None], sm[None], noise)[0]
            pred = (logits[:4].mean(0, keepdim=True) > 0).float()
            best = max(_dice(c[None] > 0, qm) for c in logits)
            _add(scores, name, "best", best)
        else:
            pred = (model(qi[None], si[None], sm[None])[0] > 0).float()
        _add(scores, name, "all", _dice(pred, qm))
    model.train()
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _dice(pred: torch.Tensor, gt: torch.Tensor) -> float:
    pred = pred.float()
    return float(2 * (pred * gt).sum() / (pred.sum() + gt.sum()).clamp(min=1))


def _add(scores: dict, name: str, key: str, value: float) -> None:
    """Record ``value`` under ``key`` and, for liver episodes, under the liver key too."""
    scores.setdefault(key, []).append(value)
    if name.startswith("liver"):
        scores.setdefault("liver" if key == "all" else f"{key}_liver", []).append(value)


def train(args: argparse.Namespace) -> None:
    """Run the training loop and write checkpoints and the curve."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    draw = episode_source(args)
    val = validation_set(np.random.default_rng(1234))
    model = (TycheTS if args.arch == "tyche" else UniverSeg)((args.width,) * 4)
    if args.init is not None:  # resume from a checkpoint written by save()
        model.load_state_dict(torch.load(args.init, weights_only=True)["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    t0, last_eval, step, best = time.time(), -1e9, 0, -1.0
    resume = args.out.with_name(args.out.stem + "_resume.pt")
    if args.resume and resume.exists():  # continue where the last evaluation left off
        state = load_resume(resume, model, opt)
        step, best, rng = state["step"], state["best"], state["rng"]
        t0 = time.time() - state["elapsed"]
    log = open(args.log, "a")
    while (elapsed := time.time() - t0) < args.minutes * 60 and step < args.max_steps:
        frac = max(elapsed / (args.minutes * 60), step / args.max_steps)
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        si, sm, qi, qm = make_batch(draw, args.batch, rng)
        if args.arch == "tyche":
            noise = torch.randn(len(qi), args.k, 1, *qi.shape[-2:])
            target = rater_variant(qm, rng) if args.rater == "growshrink" else qm
            loss, dice = best_candidate_loss(model(qi, si, sm, noise), target)
        else:
            loss, dice = loss_fn(model(qi, si, sm), qm)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        rec = {"step": step, "t": round(elapsed, 1), "loss": loss.item(), "dice": dice.item()}
        if elapsed - last_eval > args.eval_every:
            last_eval = elapsed
            rec["val"] = evaluate(model, val)
            if args.keep_evals:
                save(model, args, step, elapsed, rec["val"], f"_step{step}")
            if rec["val"]["all"] > best:
                best = rec["val"]["all"]
                save(model, args, step, elapsed, rec["val"])
            save_resume(resume, model, opt, step, rng, elapsed, best=best)
        log.write(json.dumps(rec) + "\n")
        log.flush()
    rec = {
        "step": step,
        "t": round(time.time() - t0, 1),
        "val": evaluate(model, val),
        "final": True,
    }
    log.write(json.dumps(rec) + "\n")
    if rec["val"]["all"] > best:
        save(model, args, step, rec["t"], rec["val"])


def episode_source(args: argparse.Namespace):
    """``draw(n_support, rng)`` for ``--data corpus`` (default) or ``--data legacy``.

    For Tyche with ``--rater ambiguity`` the query masks are simulated raters' (perturbed
    before the trainer's augmentation, so the same warps apply to image and target).
    """
    rater = getattr(args, "rater", "growshrink") == "ambiguity" and args.arch == "tyche"
    amb = Ambiguity(p=getattr(args, "ambiguity", Ambiguity.p))
    if args.data == "legacy":
        tasks = {"aal": D.aal_tasks(), "lits": D.lits_tasks()}
        groups = dict(zip(("aal", "lits", "synthetic"), args.shares, strict=True))
        if not rater:
            return lambda n, rng: legacy_episode(tasks, groups, n, rng)

        def draw(n: int, rng: np.random.Generator):
            si, sm, qi, qm = legacy_episode(tasks, groups, n, rng)
            return si, sm, qi, perturb_query(qm, rng, cfg=amb)  # no label map: no merges

        return draw
    from .corpus import load_corpus
    from .episodes import EpisodeSampler

    mix = Mix(real=args.mix[0], synth=args.mix[1], shapes=args.mix[2])
    records = load_corpus(root=args.corpus, split="train")
    if rater:
        return RaterEpisodes(records, "train", mix, ambiguity=amb).episode
    return EpisodeSampler(records, "train", mix).episode


def save(model, args: argparse.Namespace, step: int, t: float, val: dict, tag: str = "") -> None:
    """Atomically write ``{"model": state_dict, "meta": {...}}`` (``tag``: file-name suffix)."""
    meta = {"width": args.width, "step": step, "seconds": t, "val": val, "args": vars(args)}
    meta["args"] = {k: str(v) for k, v in meta["args"].items()}
    out = args.out.with_name(args.out.stem + tag + args.out.suffix)
    tmp = out.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "meta": meta}, tmp)
    tmp.replace(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Meta-train an in-context UniverSeg-type model.")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--max-steps", type=int, default=10**9, help="stop after this many steps")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--arch", choices=("universeg", "tyche"), default="universeg")
    p.add_argument("--k", type=int, default=4, help="Tyche candidates per query in training")
    p.add_argument(
        "--rater",
        choices=("ambiguity", "growshrink"),
        default="ambiguity",
        help="Tyche's simulated raters: perturbations of fmseg.training.ambiguity, or 0-3 px",
    )
    p.add_argument(
        "--ambiguity",
        type=float,
        default=Ambiguity.p,
        help="with --rater ambiguity: probability that a query target is perturbed",
    )
    p.add_argument("--batch", type=int, default=4)
    add_data_argument(p, "the first set (AAL/LiTS/ellipses)")
    p.add_argument("--corpus", type=Path, default=None, help="corpus folder (default: cache)")
    mix = (Mix.real, Mix.synth, Mix.shapes)  # the sampler's own defaults
    p.add_argument("--mix", type=float, nargs=3, default=mix, help="corpus real/synth/shapes")
    shares = (0.55, 0.25, 0.2)
    p.add_argument("--shares", type=float, nargs=3, default=shares, help="legacy AAL/LiTS/synth")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=float, default=300.0, help="seconds between validations")
    p.add_argument("--init", type=Path, default=None, help="start from this checkpoint")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <out>_resume.pt (written at every validation)",
    )
    p.add_argument("--keep-evals", action="store_true", help="also save every evaluated step")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--log", type=Path, default=Path("incontext_curve.jsonl"))
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
