"""Segment widget: scribbles and lassos, undo/redo of every interaction, edit a label."""

from __future__ import annotations

import numpy as np
import pytest
from test_widget import WAIT_MS, _boxed, _idle, _make, _object, _run, _start

from napari_fmseg import _layers as L

pytestmark = pytest.mark.gui


def test_scribble_and_lasso_layers_become_prompts(make_napari_viewer, qtbot) -> None:
    viewer, _, widget = _make(make_napari_viewer)
    session = _start(qtbot, widget)
    viewer.dims.set_current_step(0, 4)
    widget._tool.value = "lasso"
    scribbles = widget.layers["scribbles"]
    assert viewer.layers.selection.active is scribbles and scribbles.mode == "add_polygon_lasso"
    square = np.array([[4, 14, 12], [4, 14, 36], [4, 34, 36], [4, 34, 12]], float)
    scribbles.add_polygons([square])
    qtbot.waitUntil(lambda: _object(widget)[4].any(), timeout=WAIT_MS)
    _idle(qtbot, widget)
    assert session.prompts[(0, 4)].lasso is not None and _object(widget)[4, 24, 24]
    widget._tool.value = "scribble"
    widget.toggle_negative()
    assert widget._tool.value == "scribble" and scribbles.mode == "add_path"
    path = np.array([[4, 16, 14], [4, 32, 14]], float)  # a background stroke on the left edge
    scribbles.add_paths([path])
    qtbot.waitUntil(lambda: len(session.prompts[(0, 4)].points) == 5, timeout=WAIT_MS)
    _idle(qtbot, widget)
    assert not any(p.positive for p in session.prompts[(0, 4)].points)
    assert scribbles.features[L.POSITIVE].tolist() == [True, False]


def test_undo_redo_restore_object_and_prompt_layers(make_napari_viewer, qtbot, errors) -> None:
    viewer, _, widget = _make(make_napari_viewer)
    session = _start(qtbot, widget)
    _boxed(qtbot, viewer, widget, z=5)
    boxed = session.mask.copy()
    widget.layers["points"].add([5, 20, 20])
    qtbot.waitUntil(lambda: bool(session.prompts[(0, 5)].points), timeout=WAIT_MS)
    _idle(qtbot, widget)
    _run(qtbot, widget, widget.undo)
    assert widget.status.value == "Undid prompts."
    np.testing.assert_array_equal(_object(widget).astype(bool), boxed)
    assert len(widget.layers["points"].data) == 0 and len(widget.layers["box"].data) == 1
    _run(qtbot, widget, widget.redo)
    assert widget.layers["points"].data.tolist() == [[5.0, 20.0, 20.0]]
    assert widget.layers["points"].features[L.POSITIVE].tolist() == [True]
    _idle(qtbot, widget)
    assert session.history.undo_name == "prompts"  # the rewritten layers re-segmented nothing
    widget.redo()
    assert errors == ["nothing to redo"]
    clicked = session.mask.copy()
    _run(qtbot, widget, widget.clear)
    assert not _object(widget).any() and not len(widget.layers["box"].data)
    _run(qtbot, widget, widget.undo)
    assert widget.status.value == "Undid clear object."
    np.testing.assert_array_equal(_object(widget).astype(bool), clicked)
    assert len(widget.layers["points"].data) == 1 and len(widget.layers["box"].data) == 1


def test_ctrl_z_is_bound_on_the_viewer_and_labels_keep_their_own(make_napari_viewer) -> None:
    from napari.layers import Labels
    from napari.utils.key_bindings import coerce_keybinding

    viewer, _, widget = _make(make_napari_viewer)
    called = []
    widget.undo = lambda: called.append("undo")
    widget.redo = lambda: called.append("redo")
    viewer.keymap[coerce_keybinding("Control-Z")](viewer)
    viewer.keymap[coerce_keybinding("Control-Shift-Z")](viewer)
    assert called == ["undo", "redo"]
    assert coerce_keybinding("Control-Z") in Labels.class_keymap  # asked first when active


def test_edit_label_lifts_it_and_undo_puts_it_back(make_napari_viewer, qtbot) -> None:
    viewer, _, widget = _make(make_napari_viewer)
    session = _start(qtbot, widget)
    _boxed(qtbot, viewer, widget, z=5)
    _run(qtbot, widget, widget.commit)
    committed = session.labels == 1
    widget._source.value = widget.layers["labels"]
    _run(qtbot, widget, widget.start_from_layer)
    assert not session.labels.any() and np.array_equal(session.mask, committed)
    assert _object(widget).astype(bool).sum() == committed.sum()
    assert "Editing label 1" in widget.status.value
    other = viewer.add_labels(np.zeros(session.volume.shape, np.uint8), name="annotations")
    other.data[3, 5:10, 5:10] = 1
    widget._source.value = other
    _run(qtbot, widget, widget.start_from_layer)
    assert session.mask.sum() == 25 and session.mask[3, 7, 7]
    _run(qtbot, widget, widget.undo)
    _run(qtbot, widget, widget.undo)
    assert np.array_equal(session.labels == 1, committed) and not session.mask.any()
