"""Fit the ``interpolation-fitted`` rule on training-split corpus structures. Never run in CI.

For interleaved (between annotations) and beyond (extrapolation) layouts of
:mod:`fmseg.training.prior_episodes`, at 2, 4 and 8 annotated slices, every query pixel gives
the clipped interpolated signed distance ``s`` and ``s / (1 + d)`` (``d``: slices to the
nearest annotation); a logistic regression on them is fitted per layout. Prints the
coefficients as JSON (paste them into ``fmseg.incontext.prior_backend.FITTED``). With
``--objective dice`` (the default) the rule's 0.5 contour is chosen to maximise the mean Dice
per episode instead of the pixel likelihood (which large backgrounds dominate). Usage::

    python -m fmseg.training.fit_interpolation --episodes 3000
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ..incontext.prior import interpolate_masks
from .corpus import load_corpus
from .episodes import EpisodeSampler
from .prior_episodes import layout_slices

CLIP = 15.0


def episodes(sampler: EpisodeSampler, layout: str, n_eps: int, rng) -> list[tuple]:
    """``(clipped sdf, distance, truth)`` of ``n_eps`` label-only episodes of one layout."""
    out = []
    for _ in range(n_eps):
        st = sampler.structures[int(rng.integers(len(sampler.structures)))]
        labels = sampler.stacks[st.stack].labels
        n = int(rng.choice([2, 4, 8]))
        sup, q = layout_slices(st.slices, len(labels), n, layout, rng)
        masks = np.isin(labels[np.r_[sup, q]].numpy(), st.values)
        interp = interpolate_masks(q, sup, masks[:-1])
        out.append((np.clip(interp.sdf, -CLIP, CLIP), interp.distance, masks[-1]))
    return out


def features(eps: list[tuple], rng) -> tuple[np.ndarray, np.ndarray]:
    """``(X (P, 2), y (P,))``: ``s`` and ``s / (1 + d)`` of a tenth of the episodes' pixels."""
    xs, ys = [], []
    for s, d, truth in eps:
        keep = rng.random(s.size) < 0.1
        xs.append(np.stack([s.ravel(), s.ravel() / (1 + d)], 1)[keep])
        ys.append(truth.ravel()[keep])
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32)


def fit_dice(eps: list[tuple]) -> tuple[tuple[float, float, float], float]:
    """``((a, b, c), mean Dice)``: the logistic rule whose 0.5 contour maximises mean Dice.

    ``p > 0.5`` iff ``s > t(d) = alpha / (1 + gamma / (1 + d))`` with ``alpha = -a / b`` and
    ``gamma = c / b``; ``(alpha, gamma)`` is searched on a grid and ``b`` fixed to 1 (the
    contour, not the slope, decides the Dice).
    """
    best = (-1.0, (0.0, 1.0, 0.0))
    for alpha in np.arange(-4.0, 4.01, 0.25):
        for gamma in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
            scores = []
            for s, d, truth in eps:
                pred = s > alpha / (1 + gamma / (1 + d))
                inter = (pred & truth).sum()
                total = pred.sum() + truth.sum()
                scores.append(1.0 if total == 0 else 2 * inter / total)
            score = float(np.mean(scores))
            if score > best[0]:
                best = (score, (round(-float(alpha), 4), 1.0, float(gamma)))
    return best[1], round(best[0], 4)


def fit_dice_at(eps: list[tuple], alpha: float) -> float:
    """Mean Dice of the fixed threshold ``s > alpha`` (0: plain interpolation)."""
    scores = []
    for s, _d, truth in eps:
        pred = s > alpha
        total = pred.sum() + truth.sum()
        scores.append(1.0 if total == 0 else 2 * (pred & truth).sum() / total)
    return round(float(np.mean(scores)), 4)


def fit_logistic(x: np.ndarray, y: np.ndarray, iters: int = 200) -> tuple[float, float, float]:
    """``(a, b, c)`` maximising the likelihood of ``sigmoid(a + b x0 + c x1)`` (L-BFGS)."""
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y).double()
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = w[0] + xt @ w[1:]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt)
        loss.backward()
        return loss

    opt.step(closure)
    return tuple(round(float(v), 4) for v in w.detach())


def main(argv: list[str] | None = None) -> None:
    """Fit both layouts and print the coefficients."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=3000, help="episodes per layout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--objective",
        choices=("likelihood", "dice"),
        default="dice",
        help="pixel log-likelihood, or mean Dice of the 0.5 contour per episode",
    )
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    sampler = EpisodeSampler(load_corpus(), "train")
    out = {"objective": args.objective}
    for layout, key in (("interleaved", "between"), ("beyond", "beyond")):
        if args.objective == "dice":
            eps = episodes(sampler, layout, args.episodes, rng)
            out[key], out[f"{key}_dice"] = fit_dice(eps)
            plain = fit_dice_at(eps, 0.0)
            out[f"{key}_plain_dice"] = plain
            continue
        x, y = features(episodes(sampler, layout, args.episodes, rng), rng)
        out[key] = fit_logistic(x, y)
        out[f"{key}_pixels"] = len(y)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
