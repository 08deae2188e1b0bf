"""GUI tests of the fmseg dock: one dock with a tab per tool, and the parts the tools share.

The dock must fit a 1000-px screen, give the In-context and Uncertainty tools one support
set, choose the user's annotations by default, report a cancel as soon as the worker stops
(even while other fmseg work runs), and never block the GUI thread while real (tiny-model)
jobs train, apply and sample.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from napari_helpers import SlowBackend, cone
from qtpy.QtCore import QTimer

from fmseg.incontext import build_sampler
from fmseg.progress import Progress
from fmseg.registry import load_model, load_tiny
from napari_fmseg import _controls, _worker
from napari_fmseg import _layers as L
from napari_fmseg._dock import FmsegDock
from napari_fmseg._output import OutputLayer, plan_write

pytestmark = pytest.mark.gui
WAIT_MS = 120_000
SHAPE = (16, 40, 40)


def _viewer_with_cone(make_napari_viewer, shape=SHAPE, labels=True):
    viewer = make_napari_viewer()
    volume, truth, _ = cone(shape)
    image = viewer.add_image(volume, name="volume", scale=(2.0, 1.0, 1.0))
    image.contrast_limits = (-0.3, 1.3)
    if labels:
        sparse = np.zeros_like(truth)
        sparse[::4] = truth[::4]
        viewer.add_labels(sparse, name="annotations", scale=(2.0, 1.0, 1.0))
    return viewer


def _add(viewer, panel, *slices: int) -> None:
    for z in slices:
        viewer.dims.set_current_step(viewer.dims.ndim - 3, z)
        assert panel.add_current_slice(), panel.status.value


def _wait(qtbot, tool) -> None:
    qtbot.waitUntil(lambda: not tool.busy, timeout=WAIT_MS)


def test_the_dock_fits_a_1000_px_screen(make_napari_viewer, qtbot) -> None:
    viewer = _viewer_with_cone(make_napari_viewer)
    window = viewer.window._qt_window
    window.resize(1600, 1000)
    dock_widget, dock = viewer.window.add_plugin_dock_widget("fmseg")  # the only widget
    assert isinstance(dock, FmsegDock)
    assert [dock.tabText(i) for i in range(dock.count())] == list(dock.tools)
    assert list(dock.tools) == ["Segment", "In-context", "Uncertainty", "Adapt"]
    assert all(tool.load is load_model for tool in dock.tools.values())  # real weights
    qtbot.wait(50)
    for widget in (dock, dock_widget):
        assert widget.sizeHint().height() <= 900, widget
        assert widget.minimumSizeHint().height() <= 900, widget
    for name, tool in dock.tools.items():  # each tab shows whole without scrolling ...
        dock.show_tool(name)
        qtbot.wait(10)
        assert tool.native.sizeHint().height() <= 880, (name, tool.native.sizeHint())
    window.resize(1600, 1000)
    qtbot.wait(50)
    assert window.minimumSizeHint().height() <= 1000  # ... and never makes the window grow
    assert window.height() <= 1000


def test_one_support_set_for_in_context_and_uncertainty(make_napari_viewer, qtbot) -> None:
    viewer = _viewer_with_cone(make_napari_viewer)
    dock = FmsegDock(viewer, sampler_factory=build_sampler)
    viewer.window.add_dock_widget(dock)
    assert dock.incontext.panel is dock.uncertainty.panel is dock.panel
    incontext = dock.show_tool("In-context")
    assert dock.panel.native.parent() is incontext._slot.native  # shown in the front tool
    _add(viewer, dock.panel, 4, 8)
    assert incontext.status.value.startswith("Added slice 8")
    uncertainty = dock.show_tool("Uncertainty")
    assert dock.panel.native.parent() is uncertainty._slot.native
    assert len(uncertainty.panel.support) == 2 and uncertainty.panel.support_list.count() == 2
    _add(viewer, dock.panel, 12)  # reported where the clinician looks
    assert uncertainty.status.value.startswith("Added slice 12")
    uncertainty._sampler_name.value, uncertainty._k.value = "nearest+tta", 2
    uncertainty.sample_volume()
    _wait(qtbot, uncertainty)
    assert "2 candidates from nearest+tta" in uncertainty.status.value
    incontext._backend_name.value = "interpolation"
    incontext.segment()
    _wait(qtbot, incontext)
    assert "found with interpolation" in incontext.status.value
    assert len(dock.panel.support) == 3  # built once, used by both


def test_annotations_default_to_the_labels_the_user_opened(make_napari_viewer) -> None:
    viewer = _viewer_with_cone(make_napari_viewer, labels=False)
    dock = FmsegDock(viewer)
    empty = viewer.add_labels(np.zeros(SHAPE, np.int32), name=L.LABELS_LAYER)  # Segment's
    assert dock.panel._annotations.value is empty  # nothing better yet
    users = viewer.add_labels(cone()[1], name="liver.nii")
    for box in (dock.panel._annotations, dock.adapt._annotations):
        assert box.value is users, box.choices
    viewer.add_labels(np.zeros(SHAPE, np.int32), name=L.INCONTEXT_LAYER)
    assert dock.panel._annotations.value is users
    assert L.INCONTEXT_LAYER not in [x.name for x in dock.panel._annotations.choices]
    box = dock.panel._annotations  # the user picks the empty one to paint in: kept
    box.native.setCurrentIndex(box.native.findText(L.LABELS_LAYER))
    box.native.activated.emit(box.native.currentIndex())
    viewer.add_labels(cone()[1], name="other.nii")
    assert box.value is empty
    viewer.layers.remove(empty)  # the picked layer is gone: the default rule again
    assert box.value is users


def test_cancel_is_reported_when_the_worker_stops(make_napari_viewer, qtbot) -> None:
    # Three fmseg jobs at once: with Qt's global pool (2 threads on a 2-core machine) the
    # third waited for a thread, and its "Cancelling ..." lasted until one came free.
    viewer = _viewer_with_cone(make_napari_viewer)
    slow, slower = SlowBackend(delay=0.2), SlowBackend(delay=0.2)
    dock = FmsegDock(
        viewer, load=load_tiny, backend_factory=lambda *a, **k: slow,
        sampler_factory=lambda *a, **k: slower,
    )  # fmt: skip
    viewer.window.add_dock_widget(dock)
    _add(viewer, dock.panel, 4, 8)
    adapt = dock.adapt
    adapt._steps.value = 100_000
    adapt.start()
    qtbot.waitUntil(lambda: len(adapt.plot.losses) >= 1, timeout=WAIT_MS)
    dock.incontext.batch = dock.uncertainty.batch = 1  # 16 steps of 0.2 s each
    dock.incontext.segment()
    dock.uncertainty.sample_volume()
    qtbot.waitUntil(lambda: slow.calls >= 1 and slower.calls >= 1, timeout=WAIT_MS)
    assert adapt.busy and dock.incontext.busy  # all three run at the same time
    dock.uncertainty.cancel()
    assert dock.uncertainty.status.value.startswith("Cancelling sample volume")
    t0 = time.monotonic()
    _wait(qtbot, dock.uncertainty)
    assert time.monotonic() - t0 < 5  # one sampler step (0.2 s), not the other jobs' end
    assert dock.uncertainty.status.value == "sample volume cancelled: nothing was changed."
    assert adapt.busy and dock.incontext.busy
    for tool in (adapt, dock.incontext):
        tool.cancel()
        _wait(qtbot, tool)
        assert "cancelled: nothing was changed." in tool.status.value
    assert not dock.busy


def test_a_queued_job_cancels_at_once(qtbot) -> None:
    status = _controls.StatusLine()
    first, second = _worker.JobRunner(status), _worker.JobRunner(status)
    pool = _worker.thread_pool()
    pool.setMaxThreadCount(1)  # a job has to wait for a thread

    def forever():
        while True:
            yield Progress(0, 0, "step")
            time.sleep(0.05)

    try:
        first.run(forever(), "first", lambda _: None)
        second.run(forever(), "second", lambda _: None)
        qtbot.wait(100)
        assert second.running
        assert second.cancel()
        assert not second.busy  # no thread ever ran it: it ends here
        assert status.value == "second cancelled: nothing was changed."
        first.cancel()
        qtbot.waitUntil(lambda: not first.busy, timeout=WAIT_MS)
        assert status.value == "first cancelled: nothing was changed."
    finally:
        pool.setMaxThreadCount(_worker.POOL_THREADS)


def test_output_layer_plans_in_the_worker_and_undoes(make_napari_viewer, errors) -> None:
    viewer = _viewer_with_cone(make_napari_viewer, labels=False)
    image = viewer.layers["volume"]
    out = OutputLayer(viewer, "result", _controls.StatusLine())
    region = (slice(3, 5), slice(0, 40), slice(0, 40))
    new = np.zeros((2, 40, 40), np.int32)
    new[:, 10:12, 10:13] = 2
    plan = plan_write(out.target(), region, new, [2])  # no layer yet: against zeros
    assert plan.box == (slice(3, 5), slice(10, 12), slice(10, 13)) and plan.changed == 12
    assert out.apply(plan, image) == 12
    layer = out.find()
    assert tuple(layer.scale) == (2.0, 1.0, 1.0) and layer.data.sum() == 24
    layer.data[4, 0, 0] = 7  # another label, painted meanwhile: kept
    stale = plan_write(None, region, np.zeros_like(new), [2])  # planned against zeros
    assert stale.box is None
    assert out.apply(stale, image) == 12  # the layer exists now: merged again, here
    assert layer.data.sum() == 7 and layer.data[4, 0, 0] == 7
    assert out.undo() and layer.data.sum() == 24 + 7
    assert out.undo() and layer.data.sum() == 7
    assert not out.undo() and errors == ["nothing to undo"]


class Ticks:
    """A 100-ms QTimer on the GUI thread; the longest gap between its ticks."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(100)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))

    def __enter__(self) -> Ticks:
        self.times = [time.perf_counter()]
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()
        self.times.append(time.perf_counter())

    @property
    def longest(self) -> float:
        return float(np.diff(self.times).max())


def test_gui_thread_never_blocks_while_jobs_run(make_napari_viewer, qtbot) -> None:
    # Training, applying, sampling, committing, in-context segmenting and ranking the next slice
    # run in workers; the GUI thread only copies the changed box in. What napari itself does on
    # the GUI thread when a layer is made
    # (layer controls, vispy visuals: 0.1-0.3 s per layer here) happens before the clock.
    import torch._dynamo  # noqa: F401  # its first import (by the optimiser) holds the GIL

    viewer = _viewer_with_cone(make_napari_viewer, shape=(64, 64, 64))
    dock = FmsegDock(viewer, load=load_tiny, sampler_factory=build_sampler)
    assert all(tool.load is load_tiny for tool in dock.tools.values())  # passed to every tool
    viewer.window.add_dock_widget(dock)
    image = viewer.layers["volume"]
    for name in (L.ADAPTER_LAYER, L.UNCERTAINTY_LAYER):
        viewer.add_labels(np.zeros(image.data.shape, np.int32), name=name, scale=image.scale)
    adapt = dock.show_tool("Adapt")
    adapt._steps.value = 150
    uncertainty = dock.uncertainty
    uncertainty._sampler_name.value, uncertainty._k.value = "interpolation+tta", 4
    uncertainty._whole.value = True
    _add(viewer, dock.panel, 8, 32, 56)
    uncertainty.sample_slice()  # makes the samples, mean and entropy layers
    _wait(qtbot, uncertainty)
    spans, statuses = {}, {}
    with Ticks() as ticks:
        for name, run, tool in (
            ("train", adapt.start, adapt),
            ("apply", adapt.apply_volume, adapt),
            ("sample", uncertainty.sample_volume, uncertainty),
            ("commit", uncertainty.commit_mean, uncertainty),
            ("segment", dock.incontext.segment, dock.incontext),
            ("suggest", dock.incontext.suggestions.suggest, dock.incontext),
        ):
            t0 = time.perf_counter()
            run()
            _wait(qtbot, tool)
            spans[name] = time.perf_counter() - t0
            statuses[name] = tool.status.value
    assert adapt.adapter is not None and "Trained in" in statuses["train"], statuses
    assert statuses["apply"].startswith("apply to volume: "), statuses
    assert statuses["commit"].startswith("Committed mean > 0.5 on every sampled slice"), statuses
    assert statuses["segment"].startswith("segment volume: "), statuses
    assert statuses["suggest"].startswith("Next slice to annotate: "), statuses
    assert spans["train"] > 0.3 and sum(spans.values()) > 1.0, spans  # blocking would show
    assert ticks.longest < 0.25, (ticks.longest, spans)  # 100 ms period + a loaded CI
