"""GUI tests of the Uncertainty widget: called through its methods, workers awaited with qtbot.

A 16 x 40 x 40 double cone (a disc whose radius grows then shrinks along z) with matching
labels, as in the In-context tests. Samplers come through the injectable factory: the real
``nearest+tta`` (K runs of the nearest-support baseline on random support subsets, so the
candidates disagree between the radii of neighbouring supports), a slow fake to cancel, and one
raising a weights error.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari_helpers import SlowBackend, cone

from fmseg.incontext import build_sampler
from fmseg.registry import load_tiny
from fmseg.uncertainty import uncertainty_map
from fmseg.weights import WeightsError
from napari_fmseg._uncertainty_widget import (
    DISAGREEMENT,
    MEAN,
    OUTPUT_LAYER,
    SAMPLES,
    TOTAL,
    UncertaintyWidget,
)

pytestmark = pytest.mark.gui
WAIT_MS = 60_000
SHAPE = (16, 40, 40)


def _make(make_napari_viewer, factory=build_sampler, sampler="nearest+tta", k=4, **kwargs):
    viewer = make_napari_viewer()
    volume, labels, _ = cone()
    image = viewer.add_image(volume, scale=(2.0, 1.0, 1.0), contrast_limits=(-0.3, 1.3))
    annotations = viewer.add_labels(labels, name="annotations", scale=(2.0, 1.0, 1.0))
    widget = UncertaintyWidget(viewer, sampler_factory=factory, **kwargs)
    widget._sampler_name.value = sampler
    widget._k.value = k
    viewer.window.add_dock_widget(widget)
    assert widget.panel._image.value is image and widget.panel._annotations.value is annotations
    return viewer, widget


def _goto(viewer, z: int) -> None:
    """Show slice ``z`` (the z slider follows the K slider once samples are shown)."""
    viewer.dims.set_current_step(viewer.dims.ndim - 3, z)


def _add(viewer, widget, *slices: int) -> None:
    for z in slices:
        _goto(viewer, z)
        assert widget.panel.current_slice() == z
        assert widget.panel.add_current_slice(), widget.status.value


def _run(qtbot, widget, method) -> None:
    method()
    assert widget.busy
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def _data(viewer, name: str) -> np.ndarray:
    return np.asarray(viewer.layers[name].data)


def _texts(widget) -> set[str]:
    """The texts of every button in a magicgui container, however deeply nested."""
    if hasattr(widget, "_list"):
        return set().union(*(_texts(child) for child in widget))
    return {getattr(widget, "text", None)}


def test_widget_loads_through_the_manifest(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("fmseg", "fmseg")
    widget = dock.show_tool("Uncertainty")
    assert isinstance(widget, UncertaintyWidget) and widget.panel is dock.panel
    assert widget._sampler_name.value == "tyche-small"
    assert "nearest+tta" in widget._sampler_name.choices
    assert (widget._k.min, widget._k.max, widget._k.value) == (2, 16, 8)
    assert widget._threshold.value == 0.5 and widget._value.value == 1
    texts = _texts(widget) | _texts(widget.panel)
    assert {"Sample slice", "Sample volume", "Commit candidate k", "Commit mean > t"} <= texts
    assert {"Add current slice to support set", "Undo", "Cancel", "Save...", "Clear"} <= texts
    assert "Segment volume" not in texts and not hasattr(widget, "_backend_name")


def test_support_set_controls_are_the_in_context_ones(make_napari_viewer) -> None:
    viewer, widget = _make(make_napari_viewer)
    _add(viewer, widget, 2, 7, 12)
    assert len(widget.panel.support) == 3 and widget.panel.support_list.count() == 3
    assert widget.panel.support_list.item(1).text() == "axis 0, slice 7, labels [1]"
    widget.panel.support_list.item(0).setSelected(True)
    widget.panel.remove_selected()
    assert [e.index for e in widget.panel.support.examples] == [7, 12]
    widget.panel.clear()
    assert len(widget.panel.support) == 0 and widget.panel.support_list.count() == 0
    widget.panel._label.value = 3
    assert widget._value.value == 3  # the commit label follows the label value


def test_sample_volume_layers_and_maps(make_napari_viewer, qtbot) -> None:
    viewer, widget = _make(make_napari_viewer)
    annotations = viewer.layers["annotations"]
    before = annotations.data.copy()
    _add(viewer, widget, 2, 7, 12)
    _run(qtbot, widget, widget.sample_volume)
    samples, mean, heat = _data(viewer, SAMPLES), _data(viewer, MEAN), _data(viewer, DISAGREEMENT)
    total = _data(viewer, TOTAL)
    assert samples.shape == (4, *SHAPE) and mean.shape == heat.shape == total.shape == SHAPE
    assert tuple(viewer.layers[SAMPLES].scale) == (1.0, 2.0, 1.0, 1.0)
    assert tuple(viewer.layers[DISAGREEMENT].scale) == (2.0, 1.0, 1.0)
    assert viewer.dims.ndim == 4  # a slider over the candidates
    assert 0 <= mean.min() and mean.max() <= 1 and heat.min() >= 0 and heat.max() <= 1
    np.testing.assert_allclose(mean, samples.mean(0), atol=1e-6)
    np.testing.assert_allclose(heat, uncertainty_map(samples, "disagreement"), atol=1e-6)
    np.testing.assert_allclose(total, uncertainty_map(samples, "total"), atol=1e-6)
    _, _, distance = cone()
    boundary = heat[np.abs(distance) < 1].mean()
    inside, outside = heat[distance < -6].mean(), heat[distance > 6].mean()
    assert boundary > 0.3 and boundary > 2 * max(inside, outside)  # 0.42 > 0.12, 0.04
    assert len({samples[i].tobytes() for i in range(4)}) > 1  # the candidates differ
    assert "4 candidates from nearest+tta" in widget.status.value
    assert widget._candidate.max == 3
    _goto(viewer, 4)
    assert widget.diversity.value.startswith("slice 4: ")
    assert float(widget.diversity.value.split()[-1]) > 0
    _goto(viewer, 7)
    np.testing.assert_array_equal(annotations.data, before)  # only read
    assert [lay.name for lay in widget.panel._image.choices] == ["volume"]


def test_disagreement_shown_by_default_transparent_at_zero_fixed_range(
    make_napari_viewer, qtbot
) -> None:
    viewer, widget = _make(make_napari_viewer)
    assert widget._map.value == "disagreement" and widget.legend.value == ""
    _add(viewer, widget, 2, 7, 12)
    _run(qtbot, widget, widget.sample_volume)
    shown, hidden = viewer.layers[DISAGREEMENT], viewer.layers[TOTAL]
    assert shown.visible and not hidden.visible and shown.colorbar.visible
    for layer in (shown, hidden):
        assert layer.blending == "translucent"  # no additive wash over the image
        assert tuple(layer.contrast_limits) == (0, 1)  # bits, not the data range
        assert layer.colormap.map(np.array([0.0]))[0, 3] == 0  # 0 bits: fully transparent
        assert layer.colormap.map(np.array([1.0]))[0, 3] > 0.5
    assert widget.legend.value == (
        "disagreement (bits)\n0 = all candidates agree"
        "\n1 bit = candidates split evenly between structure and background"
    )
    text = viewer.canvas.overlays["text"]
    assert text.visible and text.text == widget.legend.value
    shown.contrast_limits = (0, 0.05)  # a user's auto contrast
    widget._map.value = "total"
    assert hidden.visible and not shown.visible and not shown.colorbar.visible
    assert widget.legend.value.startswith("total uncertainty (bits)\n0 = certain\n1 bit = ")
    assert text.text == widget.legend.value
    widget._map.value = "disagreement"
    assert tuple(shown.contrast_limits) == (0, 1)  # back to the fixed range


def test_sample_slice_changes_only_that_slice(make_napari_viewer, qtbot) -> None:
    viewer, widget = _make(make_napari_viewer)
    _add(viewer, widget, 7)
    _goto(viewer, 5)
    _run(qtbot, widget, widget.sample_slice)  # no layers yet: zeros elsewhere
    samples = _data(viewer, SAMPLES)
    assert samples.shape == (4, *SHAPE)
    assert not samples[:, [z for z in range(16) if z != 5]].any()
    truth7 = viewer.layers["annotations"].data[7] == 1  # nearest of one support: slice 7
    assert all(np.array_equal(samples[i, 5] > 0.5, truth7) for i in range(4))
    assert widget.diversity.value == "slice 5: 0.000"
    _goto(viewer, 6)
    assert widget.diversity.value == "slice 6: not sampled"
    _add(viewer, widget, 2, 12)
    _run(qtbot, widget, widget.sample_volume)
    before = {n: _data(viewer, n).copy() for n in (SAMPLES, MEAN, DISAGREEMENT, TOTAL)}
    widget.panel.clear()
    _add(viewer, widget, 12)  # a different support set: slice 6 changes
    _goto(viewer, 6)
    _run(qtbot, widget, widget.sample_slice)
    others = [z for z in range(16) if z != 6]
    for name, old in before.items():
        new = _data(viewer, name)
        axis = 1 if name == SAMPLES else 0
        np.testing.assert_array_equal(np.take(new, others, axis), np.take(old, others, axis))
    truth12 = viewer.layers["annotations"].data[12] == 1
    np.testing.assert_array_equal(_data(viewer, MEAN)[6] > 0.5, truth12)
    assert not np.array_equal(before[MEAN][6] > 0.5, truth12)


def test_commit_candidate_and_mean_with_undo(make_napari_viewer, qtbot, errors) -> None:
    viewer, widget = _make(make_napari_viewer)
    _add(viewer, widget, 2, 7, 12)
    previous = np.zeros(SHAPE, np.int32)
    previous[:, 0, 0] = 3  # another structure: kept
    previous[5, 20, 20] = 1
    viewer.add_labels(previous.copy(), name=OUTPUT_LAYER, scale=(2.0, 1.0, 1.0))
    assert [lay.name for lay in widget.panel._annotations.choices] == ["annotations"]
    _run(qtbot, widget, widget.sample_volume)
    samples, mean = _data(viewer, SAMPLES), _data(viewer, MEAN)
    _goto(viewer, 5)
    widget._candidate.value = 2
    _run(qtbot, widget, widget.commit_candidate)  # the merge runs in the worker
    out = _data(viewer, OUTPUT_LAYER).copy()
    expected = previous.copy()
    expected[5][expected[5] == 1] = 0
    expected[5][samples[2, 5] > 0.5] = 1
    np.testing.assert_array_equal(out, expected)
    assert "Committed candidate 2 on slice 5 as label 1" in widget.status.value
    widget._whole.value = True
    widget._value.value = 2
    widget._threshold.value = 0.7
    _run(qtbot, widget, widget.commit_mean)
    both = out.copy()
    both[mean > 0.7] = 2
    np.testing.assert_array_equal(_data(viewer, OUTPUT_LAYER), both)
    assert viewer.layers["annotations"].data.max() == 1  # never written
    widget.undo()
    np.testing.assert_array_equal(_data(viewer, OUTPUT_LAYER), out)
    widget.undo()
    np.testing.assert_array_equal(_data(viewer, OUTPUT_LAYER), previous)
    widget.undo()
    assert errors[-1] == "nothing to undo"


def test_commit_only_touches_sampled_slices(make_napari_viewer, qtbot, errors) -> None:
    viewer, widget = _make(make_napari_viewer)
    _add(viewer, widget, 7)
    _goto(viewer, 6)
    _run(qtbot, widget, widget.sample_slice)
    _goto(viewer, 9)
    _run(qtbot, widget, widget.sample_slice)  # added to the slice 6 samples
    assert viewer.layers[SAMPLES].metadata["fmseg_uncertainty"]["slices"] == {6, 9}
    _goto(viewer, 8)
    assert not widget.commit_mean()
    assert errors[-1] == "slice 8 is not sampled: press Sample slice first"
    widget._whole.value = True
    _run(qtbot, widget, widget.commit_mean)
    out = _data(viewer, OUTPUT_LAYER)
    truth7 = viewer.layers["annotations"].data[7]
    assert [z for z in range(16) if out[z].any()] == [6, 9]
    np.testing.assert_array_equal(out[6], truth7)
    assert tuple(viewer.layers[OUTPUT_LAYER].scale) == (2.0, 1.0, 1.0)


def test_cancel_a_slow_run(make_napari_viewer, qtbot) -> None:
    slow = SlowBackend(k=4)
    viewer, widget = _make(make_napari_viewer, lambda name, k: slow)
    _add(viewer, widget, 7)
    widget.sample_volume()
    qtbot.waitUntil(lambda: slow.calls >= 1, timeout=WAIT_MS)
    widget.cancel()
    assert widget.status.value.startswith("Cancelling sample volume")
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert slow.calls < 4  # 16 slices in batches of 4
    assert widget.status.value == "sample volume cancelled: nothing was changed."
    assert SAMPLES not in viewer.layers and DISAGREEMENT not in viewer.layers


def test_weights_error_is_shown(make_napari_viewer, qtbot, errors) -> None:
    def factory(name, k):
        raise WeightsError(f"checkpoint file not found for '{name}'")

    viewer, widget = _make(make_napari_viewer, factory, sampler="tyche-small")
    _add(viewer, widget, 7)
    _run(qtbot, widget, widget.sample_volume)
    assert errors == [
        "sample volume failed: checkpoint file not found for 'tyche-small' (choose another"
        " sampler, e.g. interpolation+tta, or install the weights)"
    ]
    assert widget.status.value.startswith("Error: sample volume failed")
    assert SAMPLES not in viewer.layers


def test_tiny_tyche_network_end_to_end(make_napari_viewer, qtbot) -> None:
    viewer, widget = _make(make_napari_viewer, None, sampler="tyche-small", k=2, load=load_tiny)
    _add(viewer, widget, 4, 10)
    _goto(viewer, 7)
    _run(qtbot, widget, widget.sample_slice)
    assert "2 candidates from tyche-small" in widget.status.value, widget.status.value
    samples = _data(viewer, SAMPLES)
    assert samples.shape == (2, *SHAPE) and samples[:, 7].any()
    sampler = widget._sampler[1]
    _run(qtbot, widget, widget.sample_slice)
    assert widget._sampler[1] is sampler  # built once, reused


def test_errors_before_running(make_napari_viewer, errors) -> None:
    viewer, widget = _make(make_napari_viewer)
    widget.sample_volume()
    assert errors[-1].startswith("the support set is empty")
    assert not widget.commit_candidate()
    assert errors[-1] == "no samples: press Sample slice or Sample volume first"
    _add(viewer, widget, 7)
    widget.panel._label.value = 2
    widget.sample_slice()
    assert errors[-1] == "label 2 is not in the support set: [1]"
    assert not widget.busy
