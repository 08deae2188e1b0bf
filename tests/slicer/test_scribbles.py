"""Slicer: curves as scribbles, closed curves as lassos, start from a segment, undo/redo steps."""

from __future__ import annotations

import numpy as np
import pytest
from slicer_helpers import vtk_ijk_to_ras

from fmseg import drain
from fmseg.interactive.scribbles import SCRIBBLE_POINTS, polygon_mask
from fmseg.registry import load_tiny

pytestmark = pytest.mark.slicer

logic_module = pytest.importorskip("FMSegLib.logic")
FMSegLogic = logic_module.FMSegLogic


def _curve(scene, volume, kji_points, cls="vtkMRMLMarkupsCurveNode", description=""):
    node = scene.AddNewNodeByClass(cls, "curve")
    for kji in kji_points:
        node.AddControlPointWorld(*vtk_ijk_to_ras(volume, kji))
    node.SetDescription(description)
    return node


def test_a_closed_curve_is_a_lasso_and_curves_are_scribbles(scene, phantom):
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    square = [(6, 12, 12), (6, 12, 32), (6, 28, 32), (6, 28, 12)]  # (k, j, i)
    lasso = _curve(scene, volume, square, "vtkMRMLMarkupsClosedCurveNode")
    stroke = _curve(scene, volume, [(6, 20, 14), (6, 20, 30)], description="background")
    other = _curve(scene, volume, [(3, 20, 14), (3, 20, 30)])  # another slice: ignored
    prompts = logic.read_prompts(volume, "axial", scribbles=[stroke, other], lasso=lasso)
    assert (prompts.axis, prompts.index, prompts.ignored) == (0, 6, 1)
    p = prompts.prompts
    assert len(p.points) == SCRIBBLE_POINTS and not any(q.positive for q in p.points)
    assert np.allclose(p.lasso, [(12, 12), (32, 12), (32, 28), (12, 28)], atol=1e-3)
    lasso_only = logic.read_prompts(volume, "axial", lasso=lasso)
    mask = drain(logic.segment_slice_iter(logic.read_volume(volume), lasso_only))
    np.testing.assert_array_equal(mask, polygon_mask(np.array(p.lasso), truth.shape[1:]))


def test_start_from_a_segment_then_undo_and_redo(scene, phantom):
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    logic.write_segment(seg, "organ", truth, volume)
    data = logic.read_volume(volume)
    n = drain(logic.start_from_mask_iter(data, logic.read_segment(seg, "organ", volume)))
    assert n == truth.sum()
    lasso = _curve(
        scene, volume, [(6, 0, 0), (6, 0, 5), (6, 5, 5)], "vtkMRMLMarkupsClosedCurveNode"
    )
    drain(logic.segment_slice_iter(data, logic.read_prompts(volume, "axial", lasso=lasso)))
    session = logic._sessions[volume.GetID()][1]
    assert not session.mask[6, 10:30, 10:30].any()  # the lasso replaced slice 6
    name, mask = logic.step_history(volume)
    assert name == "prompts" and np.array_equal(mask, truth)
    name, mask = logic.step_history(volume)
    assert name == "start from mask" and not mask.any()
    assert logic.step_history(volume) is None
    name, mask = logic.step_history(volume, redo=True)
    assert np.array_equal(mask, truth)
    logic.write_segment(seg, "organ", mask, volume)  # what the widget does with the result
    np.testing.assert_array_equal(logic.read_segment(seg, "organ", volume), truth)
