"""Test data and stand-ins shared by the napari tests."""

from __future__ import annotations

import time

import numpy as np

from fmseg.incontext import Backend


def cone(shape=(16, 40, 40)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A double cone: a disc whose radius grows then shrinks along z (14 px at most for 40 px).

    Returns:
        The image (labels plus noise), the labels, and the signed distance (pixels) to the
        cone's surface in each slice.
    """
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    top, centre = 0.35 * shape[1], (shape[1] - 1) / 2
    slope = 1.6 * shape[1] / 40 * 16 / shape[0]
    radius = np.maximum(0, top - slope * np.abs(z - (shape[0] - 1) / 2))
    distance = np.hypot(y - centre, x - centre) - radius
    labels = (distance < 0).astype(np.int32)
    noise = np.random.default_rng(0).normal(0, 0.1, labels.shape).astype(np.float32)
    return labels + noise, labels, distance


class SlowBackend(Backend):
    """Predicts nothing, slowly: something to cancel."""

    name = "slow"

    def __init__(self, k: int = 2, delay: float = 0.3) -> None:
        self.k, self.delay, self.calls = k, delay, 0

    def prepare(self, supports):
        return supports

    def predict(self, state, queries, positions=None):
        self.calls += 1
        time.sleep(self.delay)
        return np.zeros(queries.shape, np.float32)

    def sample(self, state, queries, positions=None):
        """K empty candidates, slowly (the sampler interface)."""
        return np.repeat(self.predict(state, queries)[None], self.k, axis=0)
