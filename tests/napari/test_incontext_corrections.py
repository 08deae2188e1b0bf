"""GUI tests of the In-context tool's auto backend and corrections (tiny random-weight network).

The path report after a run, corrective clicks on the slice shown ("Correct slice", undoable),
and "Add corrected slice to support set" re-segmenting the slices around it in the worker.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from napari_helpers import cone

from fmseg.incontext.prior import Clicks
from fmseg.registry import load_tiny
from napari_fmseg._corrections import CORRECTIONS_LAYER, clicks_on_slice
from napari_fmseg._incontext_widget import OUTPUT_LAYER, InContextWidget

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


def _body_only_tiny(name, checkpoint=None, device=None):
    """Tiny random networks; the prior network's clicks weigh heavily, so corrections show."""
    model = load_tiny(name, device=device)
    if name == "incontext-prior":
        with torch.no_grad():
            model.body_scale.fill_(1.0)
            model.prior_gain.zero_()
            model.prior_bias.zero_()
            model.body.enc_blocks[0].cross.cross_conv.weight[:, 3:5] *= 50.0
    return model


def _make(make_napari_viewer, backend="auto"):
    torch.manual_seed(0)  # the tiny networks' random weights
    viewer = make_napari_viewer()
    volume, labels, _ = cone()
    viewer.add_image(volume, scale=(2.0, 1.0, 1.0), contrast_limits=(-0.3, 1.3))
    viewer.add_labels(labels, name="annotations", scale=(2.0, 1.0, 1.0))
    widget = InContextWidget(viewer, load=_body_only_tiny)
    assert widget._backend_name.value == "auto"  # the default
    widget._backend_name.value = backend
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def _add(viewer, widget, *slices: int) -> None:
    for z in slices:
        viewer.dims.set_current_step(0, z)
        assert widget.panel.add_current_slice(), widget.status.value


def _run(qtbot, widget, method) -> None:
    method()
    assert widget.busy, widget.status.value
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def _output(viewer) -> np.ndarray:
    return np.asarray(viewer.layers[OUTPUT_LAYER].data).copy()


def test_clicks_on_slice_are_row_col_of_that_slice() -> None:
    data = np.array([[3, 10, 12], [3.2, 5, 6], [4, 1, 1], [7, 3, 9]], float)
    flags = np.array([True, False, True, True])
    assert clicks_on_slice(data, flags, 0, 3) == Clicks(((10, 12),), ((5, 6),))
    assert clicks_on_slice(data, None, 1, 3) == Clicks(((7, 9),))  # (z, x) of slice y=3
    assert not clicks_on_slice(data, flags, 2, 40)


def test_auto_reports_which_path_each_slice_took(make_napari_viewer, qtbot) -> None:
    viewer, widget = _make(make_napari_viewer)
    _add(viewer, widget, 4, 10)
    _run(qtbot, widget, widget.segment)
    status = widget.status.value
    assert "found with auto" in status, status
    assert "auto: 16 slices on the prior path (annotated slices nearby), 0 in-context" in status
    assert widget.corrections.last.done == set(range(16))
    assert all(b.enabled for b in widget.corrections.buttons)


def test_correct_slice_then_add_it_to_the_support_set(make_napari_viewer, qtbot) -> None:
    viewer, widget = _make(make_napari_viewer)
    _add(viewer, widget, 4, 12)
    _run(qtbot, widget, widget.segment)
    before = _output(viewer)
    run = widget.corrections.last
    first = run.previous(1, 8).copy()
    viewer.dims.set_current_step(0, 8)
    fixes = widget.corrections
    fixes.correct_slice()  # no click yet
    assert widget.status.value == "Error: place clicks on slice 8 first (Place clicks)"
    fixes.place_clicks()
    points = viewer.layers[CORRECTIONS_LAYER]
    assert viewer.layers.selection.active is points and points.mode == "add"
    points.add([8, 20, 20])
    fixes._negative.value = True
    points.add([[8, 2, 2], [3, 2, 2]])  # the second is on another slice: not sent
    assert list(points.features["positive"]) == [True, False, False]
    _run(qtbot, widget, fixes.correct_slice)
    assert "Slice 8 corrected with 2 clicks" in widget.status.value, widget.status.value
    corrected = _output(viewer)
    assert not np.allclose(run.previous(1, 8), first)
    np.testing.assert_array_equal(corrected[8], (run.previous(1, 8) > 0.5).astype(int))
    others = [z for z in range(16) if z != 8]
    np.testing.assert_array_equal(corrected[others], before[others])
    widget.undo()
    np.testing.assert_array_equal(_output(viewer), before)
    _run(qtbot, widget, fixes.correct_slice)
    corrected = _output(viewer)
    if not corrected[8].any():  # random weights: make sure the slice has a mask to keep
        viewer.layers[OUTPUT_LAYER].data[8, 15:25, 15:25] = 1
        corrected = _output(viewer)

    _run(qtbot, widget, fixes.add_to_support)
    status = widget.status.value
    assert status.startswith("Slice 8 added: 3 in the support set"), status
    assert "slices 5-11 segmented again" in status and "on the prior path" in status
    support = widget.panel.support
    assert [e.index for e in support.examples] == [4, 12, 8]
    np.testing.assert_array_equal(support.examples[-1].labels > 0, corrected[8] > 0)
    assert widget.panel.support_list.count() == 3
    after = _output(viewer)
    again = [5, 6, 7, 9, 10, 11]
    np.testing.assert_array_equal(after[again], (run.probs[1][again] > 0.5).astype(int))
    kept = [z for z in range(16) if z not in again]
    np.testing.assert_array_equal(after[kept], corrected[kept])
    widget.undo()
    np.testing.assert_array_equal(_output(viewer), corrected)


def test_corrections_need_a_backend_that_takes_clicks(make_napari_viewer, qtbot, errors) -> None:
    viewer, widget = _make(make_napari_viewer, backend="nearest")
    fixes = widget.corrections
    assert not any(b.enabled for b in fixes.buttons)
    assert "'nearest' does not take corrective clicks" in fixes.buttons[1].tooltip
    fixes.correct_slice()
    assert errors[-1].startswith("segment with auto first")
    _add(viewer, widget, 7)
    _run(qtbot, widget, widget.segment)
    assert "prior path" not in widget.status.value  # one-path backends: no report
    fixes.add_to_support()
    assert errors[-1] == "the result is from 'nearest', which takes no clicks"
    widget._backend_name.value = "incontext-prior"
    assert all(b.enabled for b in fixes.buttons)
    assert fixes.buttons[1].tooltip.startswith("re-segment the slice shown")
