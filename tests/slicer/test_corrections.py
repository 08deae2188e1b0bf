"""FMSegLogic on real MRML: auto's path report, corrective clicks from markups, corrected slice
added to the support set with only the affected slices of the segment updated (tiny network)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from slicer_helpers import vtk_ijk_to_ras

from fmseg import drain
from fmseg.registry import load_tiny

pytestmark = pytest.mark.slicer

logic_module = pytest.importorskip("FMSegLib.logic")
from FMSegLib import mrml  # noqa: E402

FMSegLogic = logic_module.FMSegLogic


@pytest.fixture(autouse=True)
def _seeded():
    """The tiny networks' random weights are the same on every run."""
    import torch

    torch.manual_seed(0)


def _fiducials(scene, volume, kji_points, descriptions=()):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    for n, kji in enumerate(kji_points):
        node.AddControlPoint(*(float(v) for v in vtk_ijk_to_ras(volume, kji)), f"p{n}")
        if n < len(descriptions):
            node.SetNthControlPointDescription(n, descriptions[n])
    return node


def _segmented(scene, logic, volume, truth, backend="auto"):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "examples")
    logic.write_segment(seg, "ball", truth, volume)
    logic.add_support(volume, seg, "ball", max_slices=2)  # slices 3 and 9 of 3..9
    result = drain(logic.incontext_iter(logic.read_volume(volume), 0, backend))
    out = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    logic.write_incontext(result, out, volume)
    return result, out


def test_auto_is_the_default_and_its_paths_are_reported(scene, phantom):
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic.write_segment(seg, "ball", truth, volume)
    logic.add_support(volume, seg, "ball", max_slices=2)
    result = drain(logic.incontext_iter(logic.read_volume(volume), 0))  # default backend
    assert logic.last_incontext.backend == "auto"
    assert result.path_counts() == {"prior": 12}  # 12 slices, all near slices 3 and 9
    assert logic.incontext_summary(result) == (
        "Segmented ['ball']. auto: 12 slices on the prior path (annotated slices nearby), "
        "0 in-context."
    )
    flat = drain(logic.incontext_iter(logic.read_volume(volume), 0, "interpolation"))
    assert logic.incontext_summary(flat) == "Segmented ['ball']."


def test_clicks_correct_one_slice_then_it_joins_the_support_set(scene, phantom):
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    result, out = _segmented(scene, logic, volume, truth)
    before = mrml.segment_array(out, "ball", volume)
    np.testing.assert_array_equal(before, result.labels == 1)
    positive = _fiducials(scene, volume, [(6, 20, 22), (6, 30, 40)], ["", "background"])
    negative = _fiducials(scene, volume, [(6.2, 2, 3), (1, 2, 3)])  # the 2nd: another slice
    clicks = logic.read_clicks(volume, "axial", positive, negative)
    assert (clicks.axis, clicks.index, clicks.ignored) == (0, 6, 1)
    assert np.allclose(clicks.clicks.positive, [(20, 22)])
    assert np.allclose(clicks.clicks.negative, [(2, 3), (30, 40)], atol=1e-6)
    fix = drain(logic.correct_slice_iter(logic.read_volume(volume), clicks))
    assert fix.probs.shape == (40, 48) and (fix.index, fix.label, fix.clicks) == (6, 1, 3)
    assert not np.allclose(fix.probs, result.probs[1][6])
    message = logic.write_correction(fix, out, volume)
    assert message.startswith("Slice 6 corrected with 3 clicks")
    got = mrml.segment_array(out, "ball", volume)
    np.testing.assert_array_equal(got[6], fix.probs > 0.5)
    np.testing.assert_array_equal(np.delete(got, 6, 0), np.delete(before, 6, 0))
    np.testing.assert_allclose(logic.last_incontext.previous(1, 6), fix.probs)
    assert logic.undo(out)
    np.testing.assert_array_equal(mrml.segment_array(out, "ball", volume), before)

    logic.write_correction(fix, out, volume)
    kept = mrml.segment_array(out, "ball", volume)
    kept[6] = truth[6]  # random weights: slice 6 edited further, as in the Segment Editor
    logic.write_segment(out, "ball", kept, volume)
    update = logic.add_corrected_slice(volume, out)
    assert (update.axis, update.index, update.label) == (0, 6, 1)
    assert update.slices == [4, 5, 7, 8]  # between the supports at slices 3 and 9
    assert [e.index for e in logic.support.examples] == [3, 9, 6]
    np.testing.assert_array_equal(logic.support.examples[-1].labels > 0, truth[6])
    again = drain(logic.resegment_iter(logic.read_volume(volume), update))
    assert again.path_counts() == {"prior": 4}
    message = logic.write_resegmented(again, update, out, volume)
    assert message == (
        "Slice 6 added: 3 support slices; 4 slices of 'ball' updated. auto: 4 slices on the "
        "prior path (annotated slices nearby), 0 in-context."
    )
    after = mrml.segment_array(out, "ball", volume)
    np.testing.assert_array_equal(after[update.slices], again.labels[update.slices] == 1)
    others = [k for k in range(12) if k not in update.slices]
    np.testing.assert_array_equal(after[others], kept[others])
    assert logic.undo(out)
    np.testing.assert_array_equal(mrml.segment_array(out, "ball", volume), kept)


def test_corrections_need_an_auto_result_on_that_volume(scene, phantom):
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    positive = _fiducials(scene, volume, [(6, 20, 22)])
    clicks = logic.read_clicks(volume, "axial", positive)
    with pytest.raises(ValueError, match="segment this volume from examples"):
        drain(logic.correct_slice_iter(logic.read_volume(volume), clicks))
    with pytest.raises(ValueError, match="correct a slice first"):
        logic.add_corrected_slice(volume, scene.AddNewNodeByClass("vtkMRMLSegmentationNode"))
    _segmented(scene, logic, volume, truth, backend="interpolation")
    with pytest.raises(ValueError, match="'interpolation' takes no clicks"):
        drain(logic.correct_slice_iter(logic.read_volume(volume), clicks))
    _segmented(scene, logic, volume, truth)
    with pytest.raises(ValueError, match="'lung' is not a structure"):
        drain(logic.correct_slice_iter(logic.read_volume(volume), clicks, "lung"))
    with pytest.raises(ValueError, match="same view"):
        other_view = dataclasses.replace(clicks, axis=1)
        drain(logic.correct_slice_iter(logic.read_volume(volume), other_view))
