"""GUI tests of "Next slice to annotate" in the In-context tool (interpolation: fast, exact)."""

from __future__ import annotations

import numpy as np
import pytest
from napari_helpers import cone

from napari_fmseg._incontext_widget import OUTPUT_LAYER, InContextWidget

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


def _make(make_napari_viewer):
    viewer = make_napari_viewer()
    volume, labels, _ = cone()
    viewer.add_image(volume, scale=(2.0, 1.0, 1.0), contrast_limits=(-0.3, 1.3))
    viewer.add_labels(labels, name="annotations", scale=(2.0, 1.0, 1.0))
    widget = InContextWidget(viewer)
    widget._backend_name.value = "interpolation"
    viewer.window.add_dock_widget(widget)
    return viewer, widget, labels


def _run(qtbot, widget, method) -> None:
    method()
    assert widget.busy, widget.status.value
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def test_next_slice_jumps_there_and_says_why(make_napari_viewer, qtbot, errors) -> None:
    viewer, widget, labels = _make(make_napari_viewer)
    for z in (4, 6):
        viewer.dims.set_current_step(0, z)
        assert widget.panel.add_current_slice(), widget.status.value
    panel = widget.suggestions
    _run(qtbot, widget, panel.suggest)
    best = panel.last.best
    assert panel.last.annotated == [4, 6]
    assert best.index not in (4, 5, 6)  # never next to both annotations
    assert widget.panel.current_slice() == best.index  # the viewer shows it
    status = widget.status.value
    assert status.startswith(f"Next slice to annotate: {best.index} (axis 0): {best.reason}.")
    assert "slice" in best.reason and "from the nearest" in best.reason
    result = np.asarray(viewer.layers[OUTPUT_LAYER].data)
    assert result[5].any() and (result[5] == labels[5]).mean() > 0.95  # the result, between
    # the clinician annotates the slice shown (already in "annotations"), adds it: next one
    first = best.index
    _run(qtbot, widget, panel.add_and_suggest)
    assert len(widget.panel.support) == 3
    assert panel.last.annotated == sorted([4, 6, first])
    assert panel.last.best.index not in panel.last.annotated
    assert widget.panel.current_slice() == panel.last.best.index
    assert panel.seconds < 5.0
    assert not errors


def test_next_slice_needs_a_support_set(make_napari_viewer, errors) -> None:
    _, widget, _ = _make(make_napari_viewer)
    widget.suggestions.suggest()
    assert not widget.busy
    assert (
        widget.status.value == "Error: the support set is empty: add at least one annotated slice"
    )
    assert errors
