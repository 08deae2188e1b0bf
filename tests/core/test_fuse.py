"""Multi-axis propagation and fusion, with a threshold model standing in for the network."""

import numpy as np
import pytest

from fmseg import Box, Prompts, Session, drain
from fmseg.interactive.fuse import fuse_masks, parse_axes, propagate_axes_iter, seed_slice
from fmseg.metrics import dice

from .test_propagation import ThresholdPredictor


def test_fusion_rules():
    a = np.array([1, 1, 1, 0], bool)
    b = np.array([1, 1, 0, 0], bool)
    c = np.array([1, 0, 0, 1], bool)
    assert fuse_masks([a, b, c], "vote").tolist() == [True, True, False, False]
    assert fuse_masks([a, b, c], "and").tolist() == [True, False, False, False]
    assert fuse_masks([a, b, c], "or").tolist() == [True, True, True, True]
    assert fuse_masks([a, b], "vote").tolist() == fuse_masks([a, b], "and").tolist()
    with pytest.raises(ValueError, match="fusion rule must be one of vote, and, or"):
        fuse_masks([a], "mean")


def test_axes_are_parsed_with_the_prompted_axis_first():
    assert parse_axes("0,1,2", 2) == (2, 0, 1)
    assert parse_axes([1], 1) == (1,)
    for bad, why in (("0,3", "numbers 0, 1 or 2"), ("x", "numbers 0, 1 or 2"), ("0,1", "include")):
        with pytest.raises(ValueError, match=why):
            parse_axes(bad, 2)


def test_seed_slice_is_the_largest_cross_section():
    m = np.zeros((4, 5, 6), bool)
    m[1:3, 1:4, 2] = True
    m[1, 1, 3] = True
    assert seed_slice(m, 2) == 2 and seed_slice(m, 0) == 1


def _session(volume):
    """A session whose working mask holds what a box (12, 12, 36, 36) on slice 6 selects."""
    s = Session(volume, ThresholdPredictor())
    s.mask[6, 12:37, 12:37] = volume[6, 12:37, 12:37] > 50
    return s


def test_three_axes_recover_the_ball(sphere_volume):
    truth = sphere_volume > 50
    s = _session(sphere_volume)
    result = drain(propagate_axes_iter(s, 0, 6, (0, 1, 2), rule="vote", keep_masks=True))
    assert sorted(result.results) == [0, 1, 2] and result.rule == "vote"
    assert list(result.masks) == [0, 1, 2]
    assert np.array_equal(fuse_masks(list(result.masks.values())), s.mask)
    assert result.fused == int(s.mask.sum()) and dice(s.mask, truth) > 0.95
    assert all(abs(n - truth.sum()) < 0.15 * truth.sum() for n in result.voxels.values())


def test_single_axis_equals_plain_propagation(sphere_volume):
    a, b = _session(sphere_volume), _session(sphere_volume)
    drain(a.propagate_iter(0, 6))
    result = drain(propagate_axes_iter(b, 0, 6, None))
    assert np.array_equal(a.mask, b.mask) and list(result.results) == [0]


def test_a_leak_along_one_axis_is_voted_out(sphere_volume):
    """A bright rod touching the ball runs through every axial slice: propagating along axis 0
    follows it out of the ball; along axis 2 the rod's cross-section stops the propagation."""
    vol = sphere_volume.copy()
    vol[:, 22:26, 34:38] = 100.0  # rod along axis 0, touching the ball's side
    truth = sphere_volume > 50
    single = _session(vol)
    drain(single.propagate_iter(0, 6))
    fused = _session(vol)
    drain(propagate_axes_iter(fused, 0, 6, (0, 2), rule="and"))
    assert dice(fused.mask, truth) > dice(single.mask, truth) + 0.02


def test_prompted_slices_keep_the_users_mask(sphere_volume):
    s = _session(sphere_volume)
    s.prompts[(0, 8)] = Prompts(box=Box(0, 0, 5, 5))  # the clinician's anchor
    s.mask[8] = False
    s.mask[8, :3, :3] = True
    drain(propagate_axes_iter(s, 0, 6, (0, 1, 2), rule="or"))
    assert s.mask[8].sum() == 9 and s.mask[8, :3, :3].all()


def test_progress_runs_to_the_total_and_bad_rule_is_refused(sphere_volume):
    s = _session(sphere_volume)
    steps = list(propagate_axes_iter(s, 0, 6, (0, 1)))
    assert steps[-1].done == steps[-1].total == 12 + 48
    assert all(p.done <= p.total for p in steps)
    with pytest.raises(ValueError, match="fusion rule"):
        drain(propagate_axes_iter(s, 0, 6, (0, 1), rule="max"))
