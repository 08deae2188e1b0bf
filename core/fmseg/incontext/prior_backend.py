"""In-context backends that use the annotated slices of the query's own volume.

* :class:`PriorBackend` (``incontext-prior``, and ``auto``): the prior-conditioned network
  (:mod:`fmseg.models.prior_universeg`). Per query it decides the path: **prior** when
  annotated slices of the same volume and axis bracket it or lie within ``reach`` slices (the
  interpolated mask goes in as the prior channel), **in-context** otherwise (no prior: the
  support set alone). Corrective clicks and a previous prediction go in as further channels.
* :class:`FittedInterpolationBackend` (``interpolation-fitted``): the best model-free rule
  found so far, a logistic function of the interpolated signed distance and of the distance
  in slices to the nearest annotation (coefficients fitted on training-split episodes by
  :mod:`fmseg.training.fit_interpolation`).

Both work at the network's input size (128x128) and resize back to each query's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit

from .backends import Backend, Position, Supports, resize, stack_resized
from .prior import (
    PREDICTION_CLOSENESS,
    Clicks,
    Interpolated,
    closeness,
    interpolate,
    prior_from_sdf,
    query_channels,
    signed_distance,
)

REACH = 20  # slices: the farthest extrapolation in the network's training episodes
MAX_SUPPORT = 8  # the largest support set in its training episodes
PATHS = ("prior", "in-context")


@dataclass
class PriorState:
    """Prepared supports: resized tensors and signed distances per ``(source, axis)``."""

    images: torch.Tensor  # (S, 1, s, s)
    masks: torch.Tensor  # (S, 1, s, s)
    positions: tuple[Position, ...] | None
    sdfs: dict[tuple[str, int], list[tuple[int, np.ndarray]]]


def prepare_state(supports: Supports, size: int, device) -> PriorState:
    """Resize the supports once and compute their signed distances at ``size``."""
    imgs = stack_resized(supports.images, size)[:, None].to(device)
    masks = stack_resized(supports.masks, size, mask=True)[:, None].to(device)
    sdfs: dict[tuple[str, int], list] = {}
    if supports.positions is not None:
        for p, m in zip(supports.positions, masks[:, 0].cpu().numpy(), strict=True):
            sdfs.setdefault((p[0], p[1]), []).append((p[2], signed_distance(m > 0.5)))
    return PriorState(imgs, masks, supports.positions, sdfs)


def query_prior(state: PriorState, pos: Position | None, reach: int) -> Interpolated | None:
    """The interpolation at ``pos`` when the prior path applies there, else None."""
    if pos is None or (pos[0], pos[1]) not in state.sdfs:
        return None
    interp = interpolate(pos[2], state.sdfs[(pos[0], pos[1])])
    return interp if interp.bracketed or interp.distance <= reach else None


class PriorBackend(Backend):
    """The prior-conditioned in-context network.

    Args:
        model: :func:`~fmseg.models.prior_universeg.build_prior_universeg` network, eval mode.
        size: Network input side.
        reach: Largest distance in slices at which a one-sided annotation still gives a prior.
        use_prior: False forces the in-context path everywhere (for comparisons).
        batch_images: Bound on ``queries x supports`` per forward pass.
    """

    name = "incontext-prior"

    def __init__(
        self,
        model: torch.nn.Module,
        size: int = 128,
        reach: int = REACH,
        use_prior: bool = True,
        batch_images: int = 64,
    ):
        self.model, self.size, self.reach = model.eval(), size, reach
        self.use_prior, self.batch_images = use_prior, batch_images
        self.device = next(model.parameters()).device
        self.last_paths: list[str] = []

    def prepare(self, supports: Supports) -> PriorState:
        """Supports resized once; signed distances of the same-volume ones."""
        return prepare_state(supports, self.size, self.device)

    def paths(self, state: PriorState, positions: Sequence[Position | None] | None) -> list[str]:
        """Per query ``"prior"`` or ``"in-context"`` (see the module doc)."""
        positions = positions or []
        return [
            "prior" if self.use_prior and query_prior(state, p, self.reach) else "in-context"
            for p in positions
        ]

    def _subset(self, state: PriorState, pos: Position | None) -> tuple[int, ...]:
        """At most :data:`MAX_SUPPORT` supports: the nearest slices of the query's volume first."""
        n = len(state.images)
        if n <= MAX_SUPPORT:
            return tuple(range(n))
        if pos is not None and state.positions is not None:

            def key(i):
                p = state.positions[i]
                same = p[0] == pos[0] and p[1] == pos[1]
                return (0, abs(p[2] - pos[2])) if same else (1, i)

            return tuple(sorted(sorted(range(n), key=key)[:MAX_SUPPORT]))
        return tuple(np.linspace(0, n - 1, MAX_SUPPORT).round().astype(int).tolist())

    def channels(
        self,
        state: PriorState,
        query: np.ndarray,
        pos: Position | None,
        clicks: Clicks | None = None,
        previous: np.ndarray | None = None,
    ) -> np.ndarray:
        """The ``(6, s, s)`` input of one ``(H, W)`` query.

        The prior is the interpolation when the prior path applies, else ``previous`` (the
        slice's last prediction, when given), else none; clicks are scaled to the input size.
        """
        h, w = query.shape
        img = resize(torch.as_tensor(np.asarray(query, np.float32))[None], (self.size,) * 2)[0]
        prior, near = None, 0.0
        interp = query_prior(state, pos, self.reach) if self.use_prior else None
        if interp is not None:  # the interpolation stays the prior, also under clicks
            prior, near = prior_from_sdf(interp.sdf), closeness(interp.distance)
        elif previous is not None:  # the in-context path refines its last prediction
            prev = resize(torch.as_tensor(np.asarray(previous, np.float32))[None], img.shape)
            prior, near = prev[0].numpy(), PREDICTION_CLOSENESS
        scaled = clicks.scaled(self.size / h, self.size / w) if clicks else None
        return query_channels(img.numpy(), prior, near, scaled)

    @torch.inference_mode()
    def predict(
        self,
        state: PriorState,
        queries: np.ndarray,
        positions: list[Position] | None = None,
        clicks: Sequence[Clicks | None] | None = None,
        previous: np.ndarray | None = None,
    ) -> np.ndarray:
        """Probabilities ``(N, H, W)``; records each query's path in :attr:`last_paths`.

        Args:
            state: From :meth:`prepare`.
            queries: ``(N, H, W)`` in [0, 1].
            positions: ``(source, axis, index)`` per query (None: in-context path only).
            clicks: Per query corrective interactions in its pixel coordinates, or None.
            previous: ``(N, H, W)`` previous probabilities (replace the interpolated prior).
        """
        queries = np.asarray(queries, np.float32)
        n = len(queries)
        pos = list(positions) if positions is not None else [None] * n
        clicks = list(clicks) if clicks is not None else [None] * n
        x = np.stack(
            [
                self.channels(state, q, p, c, None if previous is None else previous[i])
                for i, (q, p, c) in enumerate(zip(queries, pos, clicks, strict=True))
            ]
        )
        self.last_paths = [
            "prior" if 0 < x[i, 2].max() < PREDICTION_CLOSENESS else "in-context" for i in range(n)
        ]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(pos):
            groups.setdefault(self._subset(state, p), []).append(i)
        out = torch.zeros(n, self.size, self.size)
        xt = torch.from_numpy(x).to(self.device)
        for subset, members in groups.items():
            idx = torch.as_tensor(subset)
            si, sm = state.images[idx], state.masks[idx]
            step = max(1, self.batch_images // len(idx))
            for k in range(0, len(members), step):
                m = torch.as_tensor(members[k : k + step])
                b = len(m)
                logits = self.model(
                    xt[m], si[None].expand(b, -1, -1, -1, -1), sm[None].expand(b, -1, -1, -1, -1)
                )
                out[m] = torch.sigmoid(logits[:, 0]).cpu()
        shape = queries.shape[-2:]
        return resize(out, tuple(shape)).clamp(0, 1).numpy()


@dataclass(frozen=True)
class FittedRule:
    """``p = sigmoid(a + b * s + c * s / (1 + d))``, ``s`` the signed distance clipped to ±CLIP.

    One coefficient triple for queries between annotations, one (or None: the nearest
    annotation's mask, as plain interpolation) for queries beyond them.
    """

    between: tuple[float, float, float]
    beyond: tuple[float, float, float] | None
    clip: float = 15.0

    def probability(self, interp: Interpolated) -> np.ndarray:
        """``(H, W)`` probability at one query."""
        coef = self.between if interp.bracketed else self.beyond
        if coef is None:
            return (interp.sdf > 0).astype(np.float32)
        a, b, c = coef
        s = np.clip(interp.sdf, -self.clip, self.clip)
        z = a + b * s + c * s / (1.0 + interp.distance)
        return expit(z).astype(np.float32)


# ``fit_interpolation --objective dice --episodes 1000`` (2026-12-03): the 0.5 contours that
# maximise the mean Dice of 1,000 training-split episodes per layout (between: 0.532 against
# plain interpolation's 0.502; beyond: 0.395 against 0.237). A first fit by pixel likelihood
# ((-0.6622, 0.241, 1.804) / (-1.5729, 0.3074, 1.4408)) is logged in
# docs/dev/incontext_experiments.md.
FITTED = FittedRule(between=(2.5, 1.0, 8.0), beyond=(-4.0, 1.0, 4.0))


class FittedInterpolationBackend(Backend):
    """The fitted interpolation rule (``interpolation-fitted``); needs same-volume supports."""

    name = "interpolation-fitted"

    def __init__(self, rule: FittedRule = FITTED, size: int = 128):
        self.rule, self.size = rule, size

    def prepare(self, supports: Supports) -> PriorState:
        """Signed distances of the supports at the working size."""
        if supports.positions is None:
            raise ValueError("interpolation needs the slice positions of the supports")
        return prepare_state(supports, self.size, "cpu")

    def predict(self, state: PriorState, queries: np.ndarray, positions=None) -> np.ndarray:
        """Probabilities; raises when a query's volume/axis has no support."""
        if positions is None:
            raise ValueError("interpolation needs the slice positions of the queries")
        out = []
        for pos in positions:
            sdfs = state.sdfs.get((pos[0], pos[1]))
            if not sdfs:
                raise ValueError(f"no support slice from {pos[0]!r} along axis {pos[1]}")
            out.append(self.rule.probability(interpolate(pos[2], sdfs)))
        shape = np.asarray(queries).shape[-2:]
        return resize(torch.from_numpy(np.stack(out)), tuple(shape)).clamp(0, 1).numpy()
