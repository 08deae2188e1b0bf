"""Calibration of voxel probabilities: fit, apply, measure (pure numpy).

A *calibration* is a tiny JSON-able dict stored in a checkpoint's ``meta["calibration"]``:

* ``{"kind": "temperature", "t": 1.3}``: ``sigmoid(logit(p) / t)`` (Guo et al., 2017);
* ``{"kind": "isotonic", "x": [...], "y": [...]}``: a monotone map, linear between the points
  ``(x_i, y_i)`` (pool-adjacent-violators on binned probabilities; Zadrozny & Elkan, 2002).

:func:`apply_calibration` is the one place where a calibration changes probabilities;
:func:`stored_calibration` reads one from a checkpoint. Reliability is measured on the
foreground probability: per bin of ``p``, the mean ``p`` (confidence) against the fraction of
foreground labels (accuracy); ``ECE = sum_b n_b / N |accuracy_b - confidence_b|``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EPS = 1e-6
KINDS = ("temperature", "isotonic")


def logit(p: np.ndarray, eps: float = EPS) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to ``[eps, 1 - eps]``."""
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _flat(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(probs, np.float64).ravel(), np.asarray(labels).ravel()
    if p.shape != y.shape:
        raise ValueError(f"probs and labels must have the same size, got {p.size} and {y.size}")
    return p, y.astype(np.float64) > 0.5


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary negative log-likelihood of ``labels`` under ``probs`` (any equal shapes)."""
    p, y = _flat(probs, labels)
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds=(0.05, 20.0)) -> dict:
    """Temperature minimising the NLL of ``sigmoid(logits / t)`` (any equal shapes).

    The NLL is convex in ``1 / t``; a golden-section search over ``log t`` within ``bounds``
    finds its minimum to about 1e-4 relative.

    Returns:
        ``{"kind": "temperature", "t": t}``.
    """
    z, y = _flat(logits, labels)
    sign = np.where(y, 1.0, -1.0)
    zy = z * sign  # NLL of sigmoid(z / t) for label y is softplus(-zy / t)

    def loss(log_t: float) -> float:
        return float(np.mean(np.logaddexp(0.0, -zy / np.exp(log_t))))

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > 1e-5:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return {"kind": "temperature", "t": round(float(np.exp((lo + hi) / 2)), 5)}


def pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Non-decreasing least-squares fit to ``y`` with weights ``w`` (both ``(N,)``)."""
    vals, wts, sizes = [], [], []
    for yi, wi in zip(np.asarray(y, float), np.asarray(w, float), strict=True):
        vals.append(yi)
        wts.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wsum = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum if wsum > 0 else vals[-1]
            vals[-2:], wts[-2:], sizes[-2:] = [v], [wsum], [sizes[-2] + sizes[-1]]
    return np.repeat(vals, sizes)


def fit_isotonic(probs: np.ndarray, labels: np.ndarray, bins: int = 1000) -> dict:
    """A monotone map from probability to foreground frequency (any equal shapes).

    Probabilities are pooled into up to ``bins`` quantile bins (so the stored map stays small
    whatever the number of voxels), then pool-adjacent-violators fits a non-decreasing
    frequency per bin; pooled runs collapse to one point. Outputs are kept in
    ``[1e-4, 1 - 1e-4]`` so no voxel becomes certain.

    Returns:
        ``{"kind": "isotonic", "x": [...], "y": [...]}`` with ``x`` increasing.
    """
    p, y = _flat(probs, labels)
    if p.size == 0:
        raise ValueError("cannot fit a calibration on no samples")
    order = np.argsort(p, kind="stable")
    p, y = p[order], y[order]
    edges = np.unique(np.linspace(0, p.size, bins + 1).astype(np.int64))
    counts = np.diff(edges).astype(float)
    mean_p = np.add.reduceat(p, edges[:-1]) / counts
    mean_y = np.add.reduceat(y.astype(float), edges[:-1]) / counts
    fit = pool_adjacent_violators(mean_y, counts)
    xs, ys = [], []
    for v in np.unique(fit):  # one point per pooled run: its weighted mean probability
        run = fit == v
        xs.append(float(np.average(mean_p[run], weights=counts[run])))
        ys.append(float(np.clip(v, 1e-4, 1 - 1e-4)))
    xs, ys = np.round(xs, 6), np.round(ys, 6)
    keep = np.concatenate([[True], np.diff(xs) > 0])  # strictly increasing x for interp
    return {"kind": "isotonic", "x": xs[keep].tolist(), "y": ys[keep].tolist()}


def apply_calibration(probs: np.ndarray, calibration: dict | None) -> np.ndarray:
    """Calibrated probabilities, same shape and float dtype as ``probs`` (None: unchanged).

    Args:
        probs: Probabilities of any shape, e.g. ``(K, N, H, W)`` candidates.
        calibration: A dict of :data:`KINDS` (see the module docstring), or None.
    """
    if calibration is None:
        return probs
    p = np.asarray(probs)
    dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.float32
    kind = calibration.get("kind")
    if kind == "temperature":
        out = sigmoid(logit(p) / float(calibration["t"]))
    elif kind == "isotonic":
        out = np.interp(p, np.asarray(calibration["x"]), np.asarray(calibration["y"]))
    else:
        raise ValueError(f"unknown calibration kind {kind!r}; known: {', '.join(KINDS)}")
    return out.astype(dtype)


def _bins(probs, labels, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bins,)`` confidence, accuracy (NaN when empty) and count per equal-width bin."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    p, y = _flat(probs, labels)
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=bins) / count
        acc = np.bincount(idx, weights=y.astype(float), minlength=bins) / count
    return conf, acc, count


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, list]:
    """Per equal-width bin of the foreground probability: confidence, accuracy, count.

    Returns:
        ``{"edges": (bins + 1,), "confidence": (bins,), "accuracy": (bins,), "count": (bins,)}``
        as JSON-able lists; empty bins have confidence and accuracy None.
    """
    conf, acc, count = _bins(probs, labels, bins)

    def listed(a: np.ndarray) -> list:
        return [None if np.isnan(v) else float(v) for v in a]

    return {
        "edges": np.linspace(0, 1, bins + 1).tolist(),
        "confidence": listed(conf),
        "accuracy": listed(acc),
        "count": count.astype(int).tolist(),
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of foreground probabilities: count-weighted mean of ``|accuracy - confidence|``."""
    conf, acc, count = _bins(probs, labels, bins)
    if count.sum() == 0:
        raise ValueError("cannot measure calibration on no samples")
    return float(np.nansum(np.abs(acc - conf) * count) / count.sum())


def stored_calibration(checkpoint: str | Path | None) -> dict | None:
    """``meta["calibration"]`` of a ``{"model": ..., "meta": ...}`` checkpoint, or None."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return None
    import torch  # only here: the rest of the module is numpy

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta = state.get("meta") if isinstance(state, dict) else None
    return meta.get("calibration") if isinstance(meta, dict) else None
