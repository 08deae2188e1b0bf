"""Next slice to annotate from the FMSeg Logic on real MRML: indices, reasons, view moved."""

from __future__ import annotations

import numpy as np
import pytest
from slicer_helpers import annotated_logic  # first: skips this module without slicer-core

pytestmark = pytest.mark.slicer

pytest.importorskip("FMSegLib.logic")
from FMSegLib import suggest  # noqa: E402


def _slice_node(scene):
    import slicer

    node = slicer.vtkMRMLSliceNode()
    node.SetLayoutName("Red")
    node.SetOrientationToAxial()
    scene.AddNode(node)
    return node


def test_suggest_returns_indices_and_reasons_and_moves_the_view(scene, phantom):
    logic, volume = annotated_logic(scene, phantom, 2)  # slices 3 and 9 of 3..9
    annotated = sorted(e.index for e in logic.support.examples)
    assert annotated == [3, 9]
    view = _slice_node(scene)
    indices, reasons = suggest.suggest_next_slice(
        logic, volume, backend="interpolation", slice_node=view, top=3
    )
    assert len(indices) == 3 and not set(indices) & {3, 9}
    assert indices[0] == 6  # the middle of the only gap
    assert all("from the nearest" in r for r in reasons)
    ras = suggest.show_slice(volume, 0, indices[0], view)
    m = np.array([[view.GetSliceToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    assert abs(np.dot(m[:3, 2], ras - m[:3, 3])) < 1e-6  # the plane passes through the slice


def test_suggest_iter_follows_the_support_set(scene, phantom):
    from fmseg import drain

    logic, volume = annotated_logic(scene, phantom, 3)
    res = drain(suggest.suggest_iter(logic, logic.read_volume(volume), 0, "interpolation", "ball"))
    assert res.label == 1 and res.annotated == sorted(e.index for e in logic.support.examples)
    said = suggest.write_suggestion(res, volume)  # no slice views in this scene: says only
    assert said == f"Next slice to annotate: {res.best.index} (array axis 0): {res.best.reason}."
    with pytest.raises(ValueError, match="not a structure"):
        drain(suggest.suggest_iter(logic, logic.read_volume(volume), 0, "interpolation", "x"))
