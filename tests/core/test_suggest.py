"""Next slice to annotate: ranking parts, the largest gap / disagreement wins, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmseg.incontext import (
    Suggestions,
    SupportSet,
    add_slice,
    build_backend,
    build_sampler,
    suggest_slices,
    suggest_slices_iter,
)
from fmseg.incontext.suggest import extrapolated_end, predicted_extent, rank
from fmseg.progress import Progress, drain
from fmseg.registry import load_tiny


def _tube(shift_between=None, size=48, depth=40, lo=4, hi=35, radius=10):
    """A disc moving along axis 0 (present on slices lo..hi); optionally shifted in a range."""
    z, y, x = np.mgrid[:depth, :size, :size]
    cy = np.full(depth, size / 2.0)
    if shift_between is not None:
        a, b = shift_between
        cy += np.clip((np.arange(depth) - a) / (b - a), 0, 1) * 14 - 7  # moves 14 px in a..b
    lab = ((y - cy[:, None, None]) ** 2 + (x - size / 2) ** 2 < radius**2) & (z >= lo) & (z <= hi)
    rng = np.random.default_rng(0)
    vol = (lab * 100.0 + rng.normal(0, 5, lab.shape)).astype(np.float32)
    return vol, lab.astype(np.int32)


def _support(vol, lab, slices):
    s = SupportSet()
    for i in slices:
        add_slice(s, vol, lab, 0, i)
    return s


def test_distance_only_bisects_the_largest_gap():
    vol, lab = _tube()
    support = _support(vol, lab, [8, 12, 30])
    ranked = suggest_slices(build_backend("interpolation"), support, vol, 0, weight=0.0)
    assert ranked[0].index == 21  # middle of the 12..30 gap
    assert ranked[0].distance == 9
    assert {8, 12, 30}.isdisjoint(s.index for s in ranked)
    assert len(ranked) == 40 - 3
    assert ranked[0].reason.startswith("middle of the largest gap: 9 slices from the nearest")


def test_disagreement_points_at_the_gap_where_the_shape_changes():
    vol, lab = _tube(shift_between=(20, 28))
    support = _support(vol, lab, [8, 16, 24, 32])  # equal gaps; the disc moves in 20..28
    res = drain(suggest_slices_iter(build_backend("interpolation"), support, vol, 0, weight=1.0))
    assert res.candidates == 5  # every support + one per left-out annotation
    assert 17 <= res.best.index <= 39  # where the disc moves, or beyond it (copies of 24)
    d = {s.index: s.disagreement for s in res.ranked}
    assert d[20] > 2 * d[12]  # mid-gaps: moving disc vs still disc
    assert all(d[i] == 0 for i in range(8))  # slices 8 and 16 hold the same disc
    assert res.best.reason.startswith("largest disagreement (")
    assert "px·bit" in res.best.reason and "from the nearest" in res.best.reason
    combined = suggest_slices(build_backend("interpolation"), support, vol, 0)
    assert 17 <= combined[0].index <= 39 and combined[0].distance >= 3  # not next to one


def test_ends_are_extrapolated_and_outside_slices_rank_last():
    vol, lab = _tube()
    res = drain(
        suggest_slices_iter(build_backend("interpolation"), _support(vol, lab, [14, 24]), vol)
    )
    assert res.extent == (4, 34)  # one gap (10 slices) beyond each end; truth 4..35
    outside = [s for s in res.ranked if not s.inside]
    assert outside and all(s.index < 3 or s.index > 35 for s in outside)
    assert res.ranked[-len(outside) :] == sorted(outside, key=lambda s: (-s.score, s.index))
    assert outside[0].reason.startswith("outside the predicted extent")


def test_extent_helpers():
    assert extrapolated_end([10, 20], [100.0, 100.0], 1, 40) == 30  # no shrinking: one gap
    assert extrapolated_end([10, 20], [400.0, 100.0], 1, 40) == 30  # r 20 -> 10: zero at 30
    assert extrapolated_end([10, 20], [100.0, 400.0], -1, 40) == 0  # clipped to the volume
    assert extrapolated_end([10, 20], [900.0, 100.0], 1, 40) == 25  # r 30 -> 10 in 10: 5 more
    area = np.array([0, 0, 50, 100, 100, 100, 0, 90, 80, 0, 0, 0], float)
    assert predicted_extent(area, {4: 100.0}, copies_ends=False) == (2, 8)  # steps over 6
    assert predicted_extent(area, {4: 100.0, 5: 100.0}, copies_ends=True) == (3, 6)


def test_rank_parts_and_bad_weight():
    d = np.array([0, 5, 10, 5, 0, 0, 0, 0], float)
    out = rank(d, [0, 7], (0, 7), weight=1.0)
    assert [s.index for s in out[:1]] == [2] and out[0].score == 1.0
    assert rank(np.zeros(3), [0, 1, 2], (0, 2)) == []
    with pytest.raises(ValueError, match="weight"):
        rank(d, [0], (0, 7), weight=1.5)


def test_generator_progress_and_determinism_with_a_network():
    torch.manual_seed(0)
    backend = build_backend("auto", load=load_tiny)
    vol, lab = _tube(depth=16, lo=2, hi=13, size=32, radius=7)
    support = _support(vol, lab, [4, 8, 11])
    steps = list(suggest_slices_iter(backend, support, vol, 0, seed=3))
    assert all(isinstance(s, Progress) for s in steps)
    a = drain(suggest_slices_iter(backend, support, vol, 0, seed=3, max_candidates=2))
    b = drain(suggest_slices_iter(backend, support, vol, 0, seed=3, max_candidates=2))
    assert isinstance(a, Suggestions) and a.candidates == 3
    assert a.ranked == b.ranked
    assert a.probs.shape == vol.shape


def test_sampler_candidates():
    vol, lab = _tube(depth=16, lo=2, hi=13, size=32, radius=7)
    sampler = build_sampler("interpolation+tta", k=4, seed=1)
    res = drain(
        suggest_slices_iter(
            build_backend("interpolation"), _support(vol, lab, [4, 11]), vol, sampler=sampler
        )  # fmt: skip
    )
    assert res.candidates == 4 and res.best is not None


def test_bad_input():
    vol, lab = _tube(depth=16, lo=2, hi=13, size=32, radius=7)
    backend = build_backend("interpolation")
    with pytest.raises(ValueError, match="label 2 is not in the support set"):
        suggest_slices(backend, _support(vol, lab, [4]), vol, label=2)
    two = _support(vol, lab * 2, [4])
    add_slice(two, vol, lab, 0, 6)
    with pytest.raises(ValueError, match="the support set has labels \\[1, 2\\]: choose one"):
        suggest_slices(backend, two, vol)
    with pytest.raises(ValueError, match="labels \\[\\]"):
        suggest_slices(backend, SupportSet(), vol)
    with pytest.raises(ValueError, match="3D"):
        suggest_slices(backend, _support(vol, lab, [4]), vol[0])
    with pytest.raises(ValueError, match="weight"):
        suggest_slices(backend, _support(vol, lab, [4]), vol, weight=-1)
