"""FMSegLogic on real MRML: in-context support from segments, uncertainty outputs.

Adapters: tests/slicer/test_adapters.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from slicer_helpers import add_volume, ball

from fmseg import drain, uncertainty
from fmseg.registry import load_tiny

pytestmark = pytest.mark.slicer

logic_module = pytest.importorskip("FMSegLib.logic")
from FMSegLib import mrml  # noqa: E402

FMSegLogic = logic_module.FMSegLogic


def _segmented(scene, logic, volume, truth, name="ball"):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    logic.write_segment(seg, name, truth, volume)
    return seg


def test_support_slices_spread_over_the_segment():
    mask = np.zeros((20, 4, 4), bool)
    mask[3:15, 1, 1] = True
    assert logic_module.support_slices(mask, 0, 4) == [3, 7, 10, 14]
    assert logic_module.support_slices(mask, 0, 50) == list(range(3, 15))
    assert logic_module.support_slices(mask, 1, 8) == [1]


def test_support_from_a_segment_holds_its_slices_and_name(scene, phantom):
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    seg = _segmented(scene, logic, volume, truth)
    n = logic.add_support(volume, seg, "ball", view="axial", max_slices=3)
    assert n == 3 and len(logic.support) == 3
    assert logic.support.names == {1: "ball"}
    filled = [k for k in range(truth.shape[0]) if truth[k].any()]
    for ex in logic.support.examples:
        assert ex.axis == 0 and ex.index in filled
        np.testing.assert_array_equal(ex.labels > 0, truth[ex.index])  # same voxels, same slice
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic.write_segment(other, "empty", np.zeros_like(truth), volume)
    with pytest.raises(ValueError, match="empty"):
        logic.add_support(volume, other, "empty")


def test_incontext_interpolation_fills_the_gaps_between_supports(scene, phantom):
    # The interpolation baseline is deterministic: a voxel-level check of the whole path
    # (segment -> support -> core -> segment) on the oblique grid.
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    seg = _segmented(scene, logic, volume, truth)
    logic.add_support(volume, seg, "ball", max_slices=4)
    out = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    result = drain(logic.incontext_iter(logic.read_volume(volume), 0, "interpolation"))
    ids = logic.write_incontext(result, out, volume)
    assert len(ids) == 1
    got = mrml.segment_array(out, "ball", volume)
    dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
    assert dice > 0.8, dice  # 0.835 measured: 3 of 7 slices interpolated on a small ellipsoid
    for ex in logic.support.examples:  # support slices are reproduced exactly
        np.testing.assert_array_equal(got[ex.index], truth[ex.index])


def test_incontext_network_on_a_second_volume(scene, phantom):
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    logic.add_support(volume, _segmented(scene, logic, volume, truth), "ball", max_slices=2)
    query = add_volume(scene, ball(centre=(5, 22, 20)) * 200.0, name="query")
    result = drain(logic.incontext_iter(logic.read_volume(query), 0, "incontext-small"))
    assert result.labels.shape == truth.shape and set(result.probs) == {1}
    out = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic.write_incontext(result, out, query)
    np.testing.assert_array_equal(mrml.segment_array(out, "ball", query), result.labels == 1)


def test_uncertainty_samples_become_a_sequence_and_total_uncertainty_volume(scene, phantom):
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    logic.add_support(volume, _segmented(scene, logic, volume, truth), "ball", max_slices=3)
    samples = drain(logic.sample_iter(logic.read_volume(volume), 0, "tyche-small", k=3))
    assert samples.shape == (3, *truth.shape)
    nodes = logic.write_uncertainty(samples, volume, "ball", kinds=("total",))
    assert nodes.samples.GetNumberOfDataNodes() == 3
    for s in range(3):
        item = nodes.samples.GetNthDataNode(s)
        np.testing.assert_allclose(mrml.volume_array(item), samples[s], atol=1e-6)
        np.testing.assert_allclose(mrml.ijk_to_ras(item), mrml.ijk_to_ras(volume), atol=1e-9)
    np.testing.assert_allclose(
        mrml.volume_array(nodes.maps["total"]), uncertainty.entropy(samples), atol=1e-6
    )
    np.testing.assert_allclose(
        mrml.volume_array(nodes.mean), uncertainty.mean_probability(samples), atol=1e-6
    )
    np.testing.assert_allclose(mrml.ijk_to_ras(nodes.maps["total"]), mrml.ijk_to_ras(volume))
    assert nodes.browser.GetMasterSequenceNode() is nodes.samples


def test_uncertainty_by_test_time_augmentation_is_uncertain_only_near_the_edge(scene, phantom):
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    logic.add_support(volume, _segmented(scene, logic, volume, truth), "ball", max_slices=6)
    samples = drain(
        logic.sample_iter(logic.read_volume(volume), 0, "intensity+tta", k=4, segment="ball")
    )
    ent = uncertainty.entropy(samples)
    assert ent[truth].mean() < 0.5 and ent[~truth].mean() < 0.5
    assert samples.shape == (4, *truth.shape)
