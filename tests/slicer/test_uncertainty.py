"""Uncertainty outputs on real MRML: disagreement by default, total on request, with legends."""

from __future__ import annotations

import numpy as np
import pytest
from slicer_helpers import annotated_logic, ball  # first: skips this module without slicer-core

from fmseg import drain, uncertainty
from fmseg.registry import load_tiny

pytestmark = pytest.mark.slicer

logic_module = pytest.importorskip("FMSegLib.logic")
from FMSegLib import mrml  # noqa: E402
from FMSegLib import uncertainty as lib  # noqa: E402

FMSegLogic = logic_module.FMSegLogic


def _samples(scene, phantom, k=3):
    logic, volume = annotated_logic(scene, phantom, 3)
    samples = drain(logic.sample_iter(logic.read_volume(volume), 0, "tyche-small", k=k))
    return logic, volume, samples


def test_disagreement_by_default_with_its_legend(scene, phantom):
    logic, volume, samples = _samples(scene, phantom)
    nodes = logic.write_uncertainty(samples, volume, "ball")
    assert list(nodes.maps) == ["disagreement"]
    node = nodes.maps["disagreement"]
    assert node.GetName() == "ball disagreement"
    np.testing.assert_allclose(
        mrml.volume_array(node), uncertainty.mutual_information(samples), atol=1e-6
    )
    np.testing.assert_allclose(mrml.ijk_to_ras(node), mrml.ijk_to_ras(volume), atol=1e-9)
    text = uncertainty.legend("disagreement").text
    assert node.GetDescription() == text and node.GetAttribute(lib.LEGEND_ATTRIBUTE) == text
    assert node.GetAttribute(lib.KIND_ATTRIBUTE) == "disagreement"
    assert "0 = all candidates agree" in lib.describe(nodes) and "3 samples" in lib.describe(nodes)
    for s in range(3):
        item = nodes.samples.GetNthDataNode(s)
        np.testing.assert_allclose(mrml.volume_array(item), samples[s], atol=1e-6)
    np.testing.assert_allclose(
        mrml.volume_array(nodes.mean), uncertainty.mean_probability(samples), atol=1e-6
    )
    assert nodes.browser.GetMasterSequenceNode() is nodes.samples


def test_total_on_request_and_display_transparent_at_zero(scene, phantom):
    logic, volume, samples = _samples(scene, phantom)
    nodes = logic.write_uncertainty(samples, volume, "ball", kinds=("disagreement", "total"))
    total = nodes.maps["total"]
    assert total.GetName() == "ball total uncertainty"
    np.testing.assert_allclose(mrml.volume_array(total), uncertainty.entropy(samples), atol=1e-6)
    assert total.GetDescription().startswith("total uncertainty (bits): 0 = certain;")
    tables = set()
    for node in nodes.maps.values():
        display = node.GetDisplayNode()
        assert not display.GetAutoWindowLevel()  # fixed 0..1 bit, not the data range
        assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
        table = display.GetColorNode()
        assert table.GetName() == lib.COLOUR_TABLE and table.GetNumberOfColors() == 256
        lut = table.GetLookupTable()
        assert lut.GetTableValue(0)[3] == 0 and lut.GetTableValue(255)[3] > 0.5
        tables.add(table.GetID())
    assert len(tables) == 1  # one table per scene, shared


def test_unknown_map_is_refused_before_any_node(scene, phantom):
    volume, _ = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    before = scene.GetNumberOfNodes()
    samples = np.zeros((2, *ball().shape), np.float32)
    with pytest.raises(ValueError, match="unknown uncertainty map 'entropy': choose one of"):
        logic.write_uncertainty(samples, volume, "x", kinds=("entropy",))
    assert scene.GetNumberOfNodes() == before


def test_widget_write_step_shows_the_disagreement_over_the_volume(scene, phantom, monkeypatch):
    import slicer

    _, volume, samples = _samples(scene, phantom, k=2)
    shown = []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: shown.append(kw))
    status = lib.write_and_show(samples, scene=scene, volume_node=volume)
    assert status == "2 samples. " + uncertainty.legend("disagreement").text
    (layers,) = shown
    assert layers["background"] is volume and layers["foreground"].GetName() == "vol disagreement"
    assert layers["foregroundOpacity"] == 1.0  # the colour table carries the transparency
