"""Meta-train the prior-conditioned in-context network (``incontext-prior``). Never run in CI.

Each step draws a batch of :mod:`fmseg.training.prior_episodes` episodes (support size shared
in the batch: 1, 2, 4 or 8), augments them (whole-episode rot90/flip/inversion; per support
image an affine warp; gain, bias and noise on every image), and with probability ``--click-p``
simulates 1-3 rounds of corrective clicks first: the network predicts without gradients, a
click goes to the innermost pixel of the largest error region, and the prediction becomes the
next round's prior (MultiverSeg / ScribblePrompt-style training). The loss is soft Dice + BCE
of the last round. ``--warm`` starts from a plain UniverSeg-type checkpoint of the same width
(``incontext-small``), its first layer widened with zero weights for the new channels, so
training starts from that network's in-context behaviour. Held-out validation episodes
(interleaved and beyond layouts, corpus held-out subjects and regions) are scored every
``--eval-every`` seconds against the Dice of the prior alone (plain interpolation). Usage::

    python -m fmseg.training.train_prior --minutes 80 --warm core/fmseg/weights/incontext_small.pt
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..incontext.prior import CHANNELS, PREDICTION_CLOSENESS, click_map, corrective_click
from ..models.prior_universeg import build_prior_universeg, upgrade_state, widen_first_layer
from .corpus import load_corpus
from .episodes import EpisodeSampler
from .prior_episodes import PriorEpisodes, PriorMix
from .resume import load_resume, save_resume
from .train_incontext import image_augment, loss_fn

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "incontext_prior.pt"


def augment(si, sm, q, qm, rng: np.random.Generator):
    """Whole-episode rot90/flip/inversion, per-support affine, intensity jitter of the query."""
    k, flip = int(rng.integers(4)), rng.random() < 0.5
    out = []
    for t in (si, sm, q, qm):
        t = torch.rot90(t, k, dims=(-2, -1))
        out.append(torch.flip(t, dims=(-1,)) if flip else t)
    si, sm, q, qm = out
    q = q.clone()
    if rng.random() < 0.15:
        si, q[0] = 1 - si, 1 - q[0]
    si, sm = image_augment(si, sm, rng, p=0.7)
    gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
    q[0] = (q[0] * gain + bias + torch.randn_like(q[0]) * rng.uniform(0, 0.03)).clamp(0, 1)
    return si, sm, q, qm


def make_batch(episodes: PriorEpisodes, batch: int, rng: np.random.Generator):
    """``(B, S, 1, H, W)`` x2, ``(B, 6, H, W)`` queries, ``(B, 1, H, W)`` masks."""
    n = int(rng.choice([1, 2, 4, 8], p=[0.1, 0.2, 0.3, 0.4]))
    eps = [augment(*episodes.episode(n, rng), rng) for _ in range(batch)]
    return [torch.stack(x) for x in zip(*eps, strict=True)]


@torch.no_grad()
def click_rounds(model, si, sm, q, qm, rounds: int) -> torch.Tensor:
    """``q`` after ``rounds`` simulated corrective clicks.

    Clicks accumulate; an interpolated prior stays as it is (the skip keeps using it), and
    where there is none the last prediction becomes the prior (as at inference).
    """
    q = q.clone()
    pos, neg = CHANNELS.index("positive"), CHANNELS.index("negative")
    for _ in range(rounds):
        prob = torch.sigmoid(model(q, si, sm))[:, 0]
        for b in range(len(q)):
            click = corrective_click(prob[b].numpy() > 0.5, qm[b, 0].numpy() > 0.5)
            if click is None:
                continue
            (r, c), positive = click
            disc = torch.from_numpy(click_map([(r, c)], tuple(q.shape[-2:])))
            ch = pos if positive else neg
            q[b, ch] = torch.maximum(q[b, ch], disc)
        plain = q[:, 2].flatten(1).amax(1) == 0  # no interpolated prior: feed the prediction
        q[plain, 1], q[plain, 2] = prob[plain], PREDICTION_CLOSENESS
    return q


def validation_set(records, n_each: int = 6) -> list[tuple]:
    """Fixed held-out episodes: interleaved and beyond layouts at 2, 4 and 8 supports."""
    rng = np.random.default_rng(1234)
    # the priors a clinician's annotations give: not corrupted
    eps = PriorEpisodes(EpisodeSampler(records, "heldout"), PriorMix(shift=0, grow=0, drop=0))
    out = []
    for layout in ("interleaved", "beyond"):
        for n in (2, 4, 8):
            out += [(layout, n, *eps.episode(n, rng, layout)) for _ in range(n_each)]
    return out


def _dice(pred: torch.Tensor, gt: torch.Tensor) -> float:
    pred = pred.float()
    return float(2 * (pred * gt).sum() / (pred.sum() + gt.sum()).clamp(min=1))


@torch.no_grad()
def evaluate(model, val: list[tuple]) -> dict[str, float]:
    """Mean Dice of the network and of the prior alone, per layout."""
    model.eval()
    scores: dict[str, list[float]] = {}
    for layout, _n, si, sm, q, qm in val:
        pred = model(q[None], si[None], sm[None])[0] > 0
        scores.setdefault(layout, []).append(_dice(pred, qm))
        scores.setdefault(f"{layout}_prior", []).append(_dice(q[1:2] > 0.5, qm))
    model.train()
    out = {k: float(np.mean(v)) for k, v in scores.items()}
    out["all"] = float(np.mean([out["interleaved"], out["beyond"]]))
    out["gain"] = [round(float(v), 3) for v in model.prior_gain.detach()]
    out["body_scale"] = [round(float(v), 3) for v in model.body_scale.detach()]
    return out


def train(args: argparse.Namespace) -> None:
    """The training loop: checkpoints at every validation, resumable with ``--resume``."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    records = load_corpus(root=args.corpus)
    episodes = PriorEpisodes(EpisodeSampler([r for r in records], "train"))
    val = validation_set(records)
    model = build_prior_universeg(width=args.width)
    if args.warm is not None:
        widen_first_layer(model, torch.load(args.warm, weights_only=True)["model"])
    if args.init is not None:  # continue from a prior-network checkpoint (weights only)
        model.load_state_dict(upgrade_state(torch.load(args.init, weights_only=True)["model"]))
    scalars = [p for n, p in model.named_parameters() if not n.startswith("body.")]
    body = [p for n, p in model.named_parameters() if n.startswith("body.")]
    opt = torch.optim.AdamW(  # the skip's few scalars move 20x faster than the body
        [{"params": body, "base": args.lr}, {"params": scalars, "base": 20 * args.lr}],
        lr=args.lr,
        weight_decay=1e-4,
    )
    t0, last_eval, step = time.time(), -1e9, 0
    resume = args.out.with_name(args.out.stem + "_resume.pt")
    if args.resume and resume.exists():
        state = load_resume(resume, model, opt)
        step, rng = state["step"], state["rng"]
        t0 = time.time() - state["elapsed"]
    log = open(args.log, "a")
    while (elapsed := time.time() - t0) < args.minutes * 60:
        frac = elapsed / (args.minutes * 60)
        warmup = min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = g["base"] * warmup * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        si, sm, q, qm = make_batch(episodes, args.batch, rng)
        if rng.random() < args.click_p:
            q = click_rounds(model.eval(), si, sm, q, qm, int(rng.integers(1, 4)))
            model.train()
        loss, dice = loss_fn(model(q, si, sm), qm)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        rec = {"step": step, "t": round(elapsed, 1), "loss": loss.item(), "dice": dice.item()}
        if elapsed - last_eval > args.eval_every:
            last_eval = elapsed
            rec["val"] = evaluate(model, val)
            save(model, args, step, elapsed, rec["val"])
            save_resume(resume, model, opt, step, rng, elapsed)
        log.write(json.dumps(rec) + "\n")
        log.flush()
    rec = {"step": step, "t": round(time.time() - t0, 1), "val": evaluate(model, val)}
    rec["final"] = True
    log.write(json.dumps(rec) + "\n")
    save(model, args, step, rec["t"], rec["val"])


def save(model, args: argparse.Namespace, step: int, t: float, val: dict) -> None:
    """Atomically write ``{"model": state_dict, "meta": {...}}`` (the last state is shipped)."""
    meta = {"width": args.width, "step": step, "seconds": t, "val": val}
    meta["args"] = {k: str(v) for k, v in vars(args).items()}
    tmp = args.out.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "meta": meta}, tmp)
    tmp.replace(args.out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Meta-train the prior-conditioned in-context net.")
    p.add_argument("--minutes", type=float, default=80.0)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--click-p", type=float, default=0.3, help="share of steps with clicks")
    p.add_argument("--corpus", type=Path, default=None, help="corpus folder (default: cache)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=float, default=300.0, help="seconds between validations")
    p.add_argument("--warm", type=Path, default=None, help="plain UniverSeg checkpoint to widen")
    p.add_argument("--init", type=Path, default=None, help="prior-network checkpoint to start from")
    p.add_argument("--resume", action="store_true", help="continue from <out>_resume.pt")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--log", type=Path, default=Path("incontext_prior.jsonl"))
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
