"""Simulated raters for Tyche training (fmseg.training.ambiguity)."""

import numpy as np
import pytest
import torch

from fmseg.training.ambiguity import (
    Ambiguity,
    RaterEpisodes,
    jitter_boundary,
    merge_neighbour,
    perturb_target,
    signed_distance,
    split_parts,
)
from fmseg.training.episodes import Mix
from fmseg.training.record import Record


def disc(r=20, size=96) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r**2


@pytest.mark.parametrize("dtype", [bool, np.float32, np.uint8])
def test_jitter_keeps_shape_and_dtype_and_moves_only_the_boundary(dtype):
    m = disc().astype(dtype)
    out = jitter_boundary(m, np.random.default_rng(0))
    assert out.shape == m.shape and out.dtype == m.dtype
    assert set(np.unique(out)) <= {0, 1}
    changed = out.astype(bool) != m.astype(bool)
    assert changed.sum() > 20  # the boundary moved
    sd = signed_distance(m.astype(bool))
    assert not changed[np.abs(sd) > 12].any()  # far inside and far outside stay as they were


def test_jitter_is_deterministic_for_a_seed_and_varies_across_seeds():
    m = disc()
    a = jitter_boundary(m, np.random.default_rng(5))
    b = jitter_boundary(m, np.random.default_rng(5))
    c = jitter_boundary(m, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_jitter_spans_grow_and_shrink_and_keeps_empty_masks_empty():
    m = disc()
    areas = [jitter_boundary(m, np.random.default_rng(s)).sum() for s in range(20)]
    assert min(areas) < m.sum() < max(areas)
    empty = np.zeros((32, 32), bool)
    assert not jitter_boundary(empty, np.random.default_rng(0)).any()
    with pytest.raises(ValueError, match="2D"):
        jitter_boundary(np.zeros((2, 8, 8), bool), np.random.default_rng(0))


def test_merge_takes_a_touching_label_never_a_far_excluded_or_larger_one():
    lab = np.zeros((40, 40), np.int16)
    lab[10:20, 10:20] = 1  # target
    lab[10:20, 20:26] = 2  # touches, smaller
    lab[20:40, 0:40] = 3  # touches, much larger
    lab[0:5, 30:35] = 4  # far away
    m = lab == 1
    out = merge_neighbour(m, lab, np.random.default_rng(0))
    assert np.array_equal(out, m | (lab == 2))
    assert np.array_equal(merge_neighbour(m, lab, np.random.default_rng(0), excluded=(2,)), m)
    big = merge_neighbour(m, lab, np.random.default_rng(0), excluded=(2,), max_ratio=10)
    assert np.array_equal(big, m | (lab == 3))
    with pytest.raises(ValueError, match="same shape"):
        merge_neighbour(m, lab[:5], np.random.default_rng(0))


def test_split_leaves_out_one_part():
    m = disc()
    for seed in range(5):
        out = split_parts(m, np.random.default_rng(seed))
        assert out.dtype == m.dtype and out.any()
        assert not (out & ~m).any() and out.sum() < m.sum()
    assert np.array_equal(
        split_parts(m, np.random.default_rng(1)), split_parts(m, np.random.default_rng(1))
    )
    tiny = np.zeros((8, 8), bool)
    tiny[2:4, 2:4] = True
    assert np.array_equal(split_parts(tiny, np.random.default_rng(0)), tiny)


def test_perturb_target_probability_and_determinism():
    m = disc()
    assert np.array_equal(perturb_target(m, np.random.default_rng(0), cfg=Ambiguity(p=0)), m)
    cfg = Ambiguity(p=1)
    a = perturb_target(m, np.random.default_rng(3), cfg=cfg)
    assert np.array_equal(a, perturb_target(m, np.random.default_rng(3), cfg=cfg))
    assert not np.array_equal(a, m)


def test_rater_episodes_perturb_only_the_query_target():
    rng = np.random.default_rng(0)
    lab = np.zeros((24, 24, 24), np.int16)
    lab[4:20, 4:14, 4:20] = 1
    lab[4:20, 14:20, 4:20] = 2
    img = lab.astype(np.float32) * 100 + rng.normal(0, 5, lab.shape).astype(np.float32)
    rec = Record("a", "shared", "ts-ct", "CT", lab, img, names={1: "ts:liver", 2: "ts:stomach"})
    mix = Mix(real=1, synth=0, shapes=0, cross=0, merge=0, split=0, empty=0)
    plain = RaterEpisodes([rec], "train", mix, Ambiguity(p=0))
    rater = RaterEpisodes([rec], "train", mix, Ambiguity(p=1, jitter=0, split=0, merge=1))
    a = plain.episode(2, np.random.default_rng(1))
    b = rater.episode(2, np.random.default_rng(1))
    assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3], strict=True))  # supports, query
    assert b[3].shape == a[3].shape == (1, 128, 128) and b[3].dtype == torch.float32
    assert b[3].sum() > a[3].sum() * 1.2  # the query target took its neighbour in
