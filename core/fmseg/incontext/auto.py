"""The ``auto`` in-context backend: per query, the prior path or the plain in-context path.

Queries that annotated slices of the same volume and axis bracket, or that lie within
:data:`~fmseg.incontext.prior_backend.REACH` slices of one, go to the prior-conditioned
network with the interpolated mask as prior; the others (another volume, or far from every
annotation) go to the plain in-context path. :attr:`AutoBackend.last_paths` says which path
each query of the last call took; front ends and the CLI report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .backends import Backend, Position, Supports
from .prior import Clicks
from .prior_backend import PriorBackend, PriorState


@dataclass
class AutoState:
    """Both paths' prepared supports."""

    prior: PriorState
    plain: object | None


class AutoBackend(Backend):
    """Route each query to the prior path or the plain in-context path.

    Args:
        prior: The prior-conditioned backend.
        plain: The plain in-context backend (None: the prior network without a prior).
    """

    name = "auto"

    def __init__(self, prior: PriorBackend, plain: Backend | None = None):
        self.prior, self.plain = prior, plain
        self.last_paths: list[str] = []

    def prepare(self, supports: Supports) -> AutoState:
        """Prepare the supports for both paths."""
        plain = None if self.plain is None else self.plain.prepare(supports)
        return AutoState(self.prior.prepare(supports), plain)

    def paths(self, state: AutoState, positions: Sequence[Position] | None, n: int) -> list[str]:
        """Per query ``"prior"`` or ``"in-context"``."""
        if positions is None:
            return ["in-context"] * n
        return self.prior.paths(state.prior, positions)

    def predict(
        self,
        state: AutoState,
        queries: np.ndarray,
        positions: list[Position] | None = None,
        clicks: Sequence[Clicks | None] | None = None,
        previous: np.ndarray | None = None,
    ) -> np.ndarray:
        """Probabilities ``(N, H, W)``; clicks and a previous mask always use the network."""
        queries = np.asarray(queries, np.float32)
        paths = self.paths(state, positions, len(queries))
        if self.plain is None or clicks is not None or previous is not None:
            out = self.prior.predict(state.prior, queries, positions, clicks, previous)
            self.last_paths = list(self.prior.last_paths)
            return out
        out = np.zeros(queries.shape, np.float32)
        on_prior = [i for i, p in enumerate(paths) if p == "prior"]
        plain = [i for i, p in enumerate(paths) if p != "prior"]
        if on_prior:
            pos = [positions[i] for i in on_prior]
            out[on_prior] = self.prior.predict(state.prior, queries[on_prior], pos)
        if plain:
            pos = None if positions is None else [positions[i] for i in plain]
            out[plain] = self.plain.predict(state.plain, queries[plain], pos)
        self.last_paths = paths
        return out
