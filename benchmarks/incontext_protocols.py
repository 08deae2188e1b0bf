"""Protocols of the in-context benchmark: which slices support, which are queried, and scoring.

Used by ``bench_incontext.py`` (and the uncertainty benchmarks); see its docstring for the
protocols (``interleaved``, ``split``, ``cross``) and the click curve.
"""

from __future__ import annotations

import numpy as np

from fmseg.incontext import SupportSet, add_slice, segment_volume_iter
from fmseg.metrics import dice
from fmseg.progress import drain

CLICKS = 5


def protocol_slices(labels: np.ndarray, axis: int, n: int, protocol: str, step: int = 2):
    """``(support indices, query indices)`` along ``axis``; every ``step``-th query slice.

    Support positions for every ``n`` are drawn from one fixed set of up to 16 evenly spaced
    slices, and queries exclude that whole set, so the query slices are the same for every
    support size (scores are comparable along the curve).
    """
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(labels.any(axis=other))
    lo, hi = int(present.min()), int(present.max())
    mid = (lo + hi) // 2
    end = mid if protocol == "split" else hi
    pool = np.unique(np.linspace(lo, end, 18)[1:-1].round().astype(int))
    pool = np.array([i for i in pool if labels.take(i, axis).any()])
    pick = np.unique(np.linspace(0, len(pool) - 1, n + 2)[1:-1].round().astype(int))
    sup = [int(i) for i in (pool if n >= len(pool) else pool[pick])]
    if protocol == "split":
        qry = range(mid + 1, min(labels.shape[axis], hi + 3))
    else:
        qry = range(max(0, lo - 2), min(labels.shape[axis], hi + 3))
    return sup, [i for i in list(qry)[::step] if i not in set(pool.tolist())]


def make_support(target: dict, slices: list[int], shuffled: bool) -> SupportSet:
    """Support set from ``slices`` (optionally with mismatched, flipped masks)."""
    s = SupportSet()
    for i in slices:
        add_slice(s, target["image"], target["labels"], target["axis"], i, target["window"])
    if shuffled:
        masks = [np.flip(e.labels, (0, 1)) for e in s.examples]
        masks = masks[1:] + masks[:1]
        s.examples = [
            type(e)(e.image, np.ascontiguousarray(m), e.source, e.axis, e.index)
            for e, m in zip(s.examples, masks, strict=True)
        ]
    return s


def cross_support(target: dict, n: int) -> SupportSet:
    """``n`` evenly spaced annotated slices of the *support* subject's structure."""
    labels, ax = target["support_labels"], target["axis"]
    present = np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != ax)))
    pick = np.unique(np.linspace(0, len(present) - 1, n + 2)[1:-1].round().astype(int))
    s = SupportSet()
    for i in present[pick]:
        add_slice(s, target["support_image"], labels, ax, int(i), target["support_window"])
    return s


def run_one(
    backend, target: dict, n: int, protocol: str, shuffled: bool = False, counts=None
) -> float:
    """Dice of one backend on one target structure (``cross``: supports from its partner)."""
    step = target.get("step", 2)
    if protocol == "cross":
        _, qry = protocol_slices(target["labels"], target["axis"], 1, "interleaved", step)
        support = cross_support(target, n)
    else:
        sup, qry = protocol_slices(target["labels"], target["axis"], n, protocol, step)
        support = make_support(target, sup, shuffled)
    work = segment_volume_iter(
        backend, support, target["image"], target["axis"], target["window"], slices=qry
    )
    res = drain(work)
    if counts is not None:  # which path each query took (auto)
        for k, v in res.path_counts().items():
            counts[k] = counts.get(k, 0) + v
    ax = target["axis"]
    pred = np.take(res.labels > 0, qry, ax)
    return dice(pred, np.take(target["labels"] > 0, qry, ax))


def group_dice(
    backend, targets, group, n, protocol, shuffled=False, per=None, counts=None
) -> float | None:
    """Mean Dice over the targets of one group (``per``: dict collecting each target's).

    None when the protocol does not apply to the group (``cross`` is only for
    ``cross-subject``, which only has ``cross``) or the backend cannot run it (interpolation
    without supports from the query's volume).
    """
    if (protocol == "cross") != (group == "cross-subject"):
        return None
    if protocol == "cross" and backend.name.startswith("interpolation"):
        return None
    scores = []
    for t in (t for t in targets if t["group"] == group):
        scores.append(run_one(backend, t, n, protocol, shuffled, counts))
        if per is not None:
            per.setdefault(t["name"], []).append(round(scores[-1], 4))
    return round(float(np.mean(scores)), 4)


def click_curve(backend, targets, group: str, n: int, clicks: int = CLICKS) -> list[float]:
    """Mean Dice over a group's targets after 0..``clicks`` simulated corrective clicks.

    Interleaved protocol with ``n`` supports; on every query slice a click goes to the innermost
    pixel of the largest error region (:func:`fmseg.incontext.prior.corrective_click`), all
    clicks so far and the previous probabilities are fed back.
    """
    from fmseg.incontext.prior import Clicks, corrective_click
    from fmseg.incontext.segment import binary_supports, volume_queries

    per_round: list[list[float]] = [[] for _ in range(clicks + 1)]
    for t in (t for t in targets if t["group"] == group):
        sup, qry = protocol_slices(t["labels"], t["axis"], n, "interleaved", t.get("step", 2))
        support = make_support(t, sup, False)
        _, idx, queries, pos = volume_queries(t["image"], t["axis"], t["window"], qry, None)
        gt = np.take(t["labels"] > 0, idx, t["axis"])
        gt = np.moveaxis(gt, t["axis"], 0)
        state = backend.prepare(binary_supports(support, 1))
        prob = backend.predict(state, queries, pos)
        per_round[0].append(dice(prob > 0.5, gt))
        given = [Clicks() for _ in idx]
        for r in range(1, clicks + 1):
            for i in range(len(idx)):
                c = corrective_click(prob[i] > 0.5, gt[i])
                if c is not None:
                    (row, col), positive = c
                    old = given[i]
                    if positive:
                        given[i] = Clicks(old.positive + ((row, col),), old.negative, old.box)
                    else:
                        given[i] = Clicks(old.positive, old.negative + ((row, col),), old.box)
            prob = backend.predict(state, queries, pos, clicks=given, previous=prob)
            per_round[r].append(dice(prob > 0.5, gt))
    return [round(float(np.mean(v)), 4) for v in per_round]
