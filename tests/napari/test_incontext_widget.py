"""GUI tests of the In-context widget: called through its methods, workers awaited with qtbot.

A 16 x 40 x 40 double cone (a disc whose radius grows then shrinks along z) with matching
labels; fast backends come through the injectable factory (the real baselines, a slow fake to
cancel, and one raising a weights error).
"""

from __future__ import annotations

import numpy as np
import pytest
from napari_helpers import SlowBackend, cone

from fmseg.incontext import build_backend
from fmseg.registry import load_tiny
from fmseg.weights import WeightsError
from napari_fmseg._incontext_widget import OUTPUT_LAYER, InContextWidget
from napari_fmseg._support import thumbnail

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


def _make(make_napari_viewer, factory=build_backend, backend="interpolation", **kwargs):
    viewer = make_napari_viewer()
    volume, labels, _ = cone()
    image = viewer.add_image(volume, scale=(2.0, 1.0, 1.0), contrast_limits=(-0.3, 1.3))
    annotations = viewer.add_labels(labels, name="annotations", scale=(2.0, 1.0, 1.0))
    widget = InContextWidget(viewer, backend_factory=factory, **kwargs)
    widget._backend_name.value = backend
    viewer.window.add_dock_widget(widget)
    assert widget.panel._image.value is image and widget.panel._annotations.value is annotations
    return viewer, widget


def _add(viewer, widget, *slices: int) -> None:
    for z in slices:
        viewer.dims.set_current_step(0, z)
        assert widget.panel.current_slice() == z
        assert widget.panel.add_current_slice(), widget.status.value


def _run(qtbot, widget, method) -> None:
    method()
    assert widget.busy
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def _output(viewer) -> np.ndarray:
    return np.asarray(viewer.layers[OUTPUT_LAYER].data)


def test_widget_loads_through_the_manifest(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("fmseg", "fmseg")
    widget = dock.show_tool("In-context")
    assert isinstance(widget, InContextWidget) and widget.panel is dock.panel
    assert widget._backend_name.value == "auto"
    assert widget._ensemble.min == 1 and widget._ensemble.max == 16


def test_add_slices_thumbnails_remove_clear(make_napari_viewer, errors) -> None:
    viewer, widget = _make(make_napari_viewer)
    _add(viewer, widget, 2, 7, 12)
    assert len(widget.panel.support) == 3 and widget.panel.support_list.count() == 3
    assert widget.panel.support_list.item(1).text() == "axis 0, slice 7, labels [1]"
    assert not widget.panel.support_list.item(0).icon().isNull()
    ex = widget.panel.support.examples[1]
    assert ex.image.shape == (40, 40) and ex.image.min() >= 0 and ex.image.max() <= 1
    assert thumbnail(ex.image, ex.labels).shape == (64, 64, 3)
    viewer.dims.set_current_step(0, 0)
    viewer.layers["annotations"].data[0] = 0  # the cone's tip is not annotated
    assert not widget.panel.add_current_slice()
    assert "no labelled pixel" in widget.status.value and widget.status.value.startswith("Error")
    widget.panel._label.value = 5
    viewer.dims.set_current_step(0, 7)
    assert not widget.panel.add_current_slice()
    assert errors[-1] == "label 5 is absent from slice 7 (axis 0)"
    assert len(widget.panel.support) == 3
    widget.panel.support_list.item(0).setSelected(True)
    widget.panel.support_list.item(2).setSelected(True)
    widget.panel.remove_selected()
    assert [e.index for e in widget.panel.support.examples] == [7]
    assert widget.panel.support_list.count() == 1
    widget.panel.clear()
    assert len(widget.panel.support) == 0 and widget.panel.support_list.count() == 0


def test_other_axis_and_label_value(make_napari_viewer) -> None:
    viewer, widget = _make(make_napari_viewer)
    viewer.layers["annotations"].data[8, 0:3, 0:3] = 4  # a second label, far from the cone
    widget.panel._axis.value = 2
    viewer.dims.set_current_step(2, 20)
    assert widget.panel.current_slice() == 20
    widget.panel._label.value = 1
    assert widget.panel.add_current_slice()
    ex = widget.panel.support.examples[0]
    assert (ex.axis, ex.index, ex.image.shape) == (2, 20, (16, 40))
    assert thumbnail(ex.image, ex.labels).shape == (26, 64, 3)
    viewer.dims.set_current_step(2, 1)
    widget.panel._label.value = 0
    assert widget.panel.add_current_slice()
    assert widget.panel.support.label_values == [1, 4]


def test_save_load_roundtrip(make_napari_viewer, tmp_path, errors) -> None:
    viewer, widget = _make(make_napari_viewer)
    assert not widget.panel.save_support(str(tmp_path / "empty"))
    _add(viewer, widget, 3, 9)
    assert widget.panel.save_support(str(tmp_path / "liver"))
    assert (tmp_path / "liver.npz").is_file() and (tmp_path / "liver.json").is_file()
    saved = [(e.image.copy(), e.labels.copy(), e.index) for e in widget.panel.support.examples]
    widget.panel.clear()
    assert widget.panel.load_support(str(tmp_path / "liver.npz"))
    assert widget.panel.support_list.count() == 2
    for (image, labels, index), ex in zip(saved, widget.panel.support.examples, strict=True):
        np.testing.assert_array_equal(ex.image, image)
        np.testing.assert_array_equal(ex.labels, labels)
        assert ex.index == index
    assert not widget.panel.load_support(str(tmp_path / "missing.npz"))
    assert "could not load" in errors[-1]


def test_segment_volume_with_interpolation(make_napari_viewer, qtbot) -> None:
    viewer, widget = _make(make_napari_viewer)
    annotations = viewer.layers["annotations"]
    before = annotations.data.copy()
    _add(viewer, widget, 2, 7, 12)
    _run(qtbot, widget, widget.segment)
    got, truth = _output(viewer) > 0, before > 0
    dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
    assert dice > 0.85  # measured 0.90
    out = viewer.layers[OUTPUT_LAYER]
    assert tuple(out.scale) == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(annotations.data, before)  # the annotations are untouched
    assert "labels [1] found with interpolation" in widget.status.value
    assert [layer.name for layer in widget.panel._annotations.choices] == ["annotations"]


def test_segment_slice_changes_only_that_slice_and_undo(make_napari_viewer, qtbot) -> None:
    viewer, widget = _make(make_napari_viewer, backend="nearest")
    _add(viewer, widget, 7)
    previous = np.ones((16, 40, 40), np.int32)
    previous[:, 0, 0] = 3  # another structure: kept
    viewer.add_labels(previous.copy(), name=OUTPUT_LAYER, scale=(2.0, 1.0, 1.0))
    viewer.dims.set_current_step(0, 5)
    assert widget.panel.current_slice() == 5
    _run(qtbot, widget, widget.segment_slice)
    out = _output(viewer).copy()
    others = [z for z in range(16) if z != 5]
    np.testing.assert_array_equal(out[others], previous[others])
    expected = viewer.layers["annotations"].data[7]  # nearest: slice 7's mask
    np.testing.assert_array_equal(out[5] == 1, expected == 1)
    assert out[5, 0, 0] == 3
    _run(qtbot, widget, widget.segment)
    assert (_output(viewer) == 1).sum() == 16 * (expected == 1).sum()
    widget.undo()
    np.testing.assert_array_equal(_output(viewer), out)
    widget.undo()
    np.testing.assert_array_equal(_output(viewer), previous)
    widget.undo()
    assert widget.status.value == "Error: nothing to undo"


def test_tiny_network_backend_end_to_end(make_napari_viewer, qtbot) -> None:
    viewer, widget = _make(make_napari_viewer, None, backend="incontext-small", load=load_tiny)
    widget._ensemble.value = 2
    _add(viewer, widget, 4, 10)
    viewer.dims.set_current_step(0, 7)
    _run(qtbot, widget, widget.segment_slice)
    assert "found with incontext-small" in widget.status.value, widget.status.value
    out = _output(viewer)
    assert not out[[z for z in range(16) if z != 7]].any()  # random weights: any mask on 7
    backend = widget._backend[1]
    _run(qtbot, widget, widget.segment_slice)
    assert widget._backend[1] is backend  # built once, reused


def test_cancel_a_slow_run(make_napari_viewer, qtbot) -> None:
    slow = SlowBackend()
    viewer, widget = _make(make_napari_viewer, lambda name, **kw: slow, backend="intensity")
    _add(viewer, widget, 7)
    widget.segment()
    qtbot.waitUntil(lambda: slow.calls >= 1, timeout=WAIT_MS)
    widget.cancel()
    assert widget.status.value.startswith("Cancelling segment volume")
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert slow.calls < 4  # 16 slices in batches of 4
    assert widget.status.value == "segment volume cancelled: nothing was changed."
    assert OUTPUT_LAYER not in viewer.layers


def test_weights_error_is_shown(make_napari_viewer, qtbot, errors) -> None:
    def factory(name, **kwargs):
        raise WeightsError(f"no weights for '{name}': train or download them first")

    viewer, widget = _make(make_napari_viewer, factory, backend="incontext-small")
    _add(viewer, widget, 7)
    _run(qtbot, widget, widget.segment)
    assert errors == [
        "segment volume failed: no weights for 'incontext-small': train or download them first"
        " (choose another backend, e.g. interpolation, or install the weights)"
    ]
    assert widget.status.value.startswith("Error: segment volume failed")
    assert OUTPUT_LAYER not in viewer.layers


def test_errors_before_running(make_napari_viewer, qtbot, errors) -> None:
    viewer, widget = _make(make_napari_viewer)
    widget.segment()
    assert errors[-1].startswith("the support set is empty")
    _add(viewer, widget, 7)
    widget.panel._label.value = 2
    widget.segment_slice()
    assert errors[-1] == "label 2 is not in the support set: [1]"
    widget.undo()
    assert errors[-1] == "nothing to undo"
    assert not widget.busy


def test_save_and_load_dialogs(make_napari_viewer, tmp_path, monkeypatch) -> None:
    from qtpy.QtWidgets import QFileDialog

    viewer, widget = _make(make_napari_viewer)
    _add(viewer, widget, 3, 9)
    answer = {"save": "", "open": ""}
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a: (answer["save"], "*.npz"))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a: (answer["open"], "*.npz"))
    widget.panel.save_dialog()  # cancelled: nothing written
    assert not list(tmp_path.iterdir())
    answer["save"] = str(tmp_path / "set")
    widget.panel.save_dialog()
    assert (tmp_path / "set.npz").is_file()
    widget.panel.clear()
    widget.panel.load_dialog()  # cancelled: still empty
    assert len(widget.panel.support) == 0
    answer["open"] = str(tmp_path / "set.npz")
    widget.panel.load_dialog()
    assert len(widget.panel.support) == 2
