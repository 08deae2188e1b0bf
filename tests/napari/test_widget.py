"""GUI tests of the Segment widget: called through its methods, workers awaited with qtbot.

Most tests use an *oracle* session: a real :class:`fmseg.Session` with tiny models whose
encoder returns zeros (fast) and whose decoders return a known mask (the prompt box shrunk by
3 pixels, squares around clicks), so that the widget's plumbing is tested without depending on
what random weights predict. One test runs the tiny random-weight models unchanged, and a slow
one the real LiteMedSAM weights on the shipped CT.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fmseg import Window
from fmseg.interactive.predictor import Prediction
from fmseg.interactive.prompts import Box
from fmseg.interactive.session import Session
from fmseg.progress import Progress
from fmseg.registry import load_tiny
from napari_fmseg._widget import SHORTCUTS, SegmentWidget
from napari_fmseg._worker import WorkError, call_work, run_work

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


def _volume(shape=(10, 48, 48)) -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 10, shape).astype(np.float32)
    vol[:, 14:34, 12:36] += 200  # a bright block through every slice
    return vol


def _rect(z: int, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], dtype=float)


class OracleFactory:
    """Builds tiny sessions whose decoders draw the expected answer (optionally slowly)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def predict(self, emb, prompts, mask_input=None) -> Prediction:
        self.calls += 1
        time.sleep(self.delay)
        prompts.validate(emb.frame.shape)
        prob = np.zeros(emb.frame.shape, np.float32)
        if prompts.box is not None:
            b = prompts.box.normalised()
            y0, x0, y1, x1 = (round(v) for v in (b.y0, b.x0, b.y1, b.x1))
            prob[y0 + 3 : y1 - 2, x0 + 3 : x1 - 2] = 1  # the box, 3 pixels in
        for p in prompts.points:
            r, c = round(p.y), round(p.x)
            prob[max(r - 4, 0) : r + 5, max(c - 4, 0) : c + 5] = float(p.positive)
        return Prediction(prob, torch.zeros(1, 1, 4, 4), 1.0)

    def __call__(self, volume, **kwargs) -> Session:
        session = Session.from_registry(volume, device="cpu", load=load_tiny, **kwargs)
        for predictor in (session.predictor, session.point_predictor):
            if predictor is not None:
                predictor.embed_batch = lambda x: torch.zeros(x.shape[0], 1, 1, 1)
                predictor.predict = self.predict
        return session


def _make(make_napari_viewer, factory=None, volume=None, **kwargs):
    viewer = make_napari_viewer()
    volume = _volume() if volume is None else volume
    image = viewer.add_image(volume, scale=(2.0, 1.0, 1.0)[-volume.ndim :])
    widget = SegmentWidget(viewer, session_factory=factory or OracleFactory(), **kwargs)
    viewer.window.add_dock_widget(widget)
    return viewer, image, widget


def _start(qtbot, widget: SegmentWidget) -> Session:
    widget.start()
    qtbot.waitUntil(lambda: widget.session is not None, timeout=WAIT_MS)
    _idle(qtbot, widget)
    return widget.session


def _idle(qtbot, widget: SegmentWidget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def _run(qtbot, widget: SegmentWidget, method) -> None:
    """Call a method that runs in the foreground worker, and wait for it."""
    method()
    assert widget.jobs.running, widget.status.value
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=WAIT_MS)


def _object(widget: SegmentWidget) -> np.ndarray:
    return np.asarray(widget.layers["object"].data)


def _boxed(qtbot, viewer, widget, z: int = 5) -> None:
    viewer.dims.set_current_step(0, z)
    widget.layers["box"].add_rectangles(_rect(z, 12, 10, 36, 38))
    qtbot.waitUntil(lambda: _object(widget)[z].any(), timeout=WAIT_MS)
    _idle(qtbot, widget)


def test_widget_loads_through_the_manifest(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("fmseg", "fmseg")
    widget = dock.show_tool("Segment")
    assert isinstance(widget, SegmentWidget)
    assert widget.session is None
    assert all(key in widget.tooltip for key, _, _ in SHORTCUTS)


def test_the_session_runs_with_the_layers_contrast_limits(make_napari_viewer, qtbot) -> None:
    viewer, image, widget = _make(make_napari_viewer)
    image.contrast_limits = (-20.0, 150.0)  # what the user sees is what the model sees
    session = _start(qtbot, widget)
    assert session.window_policy == Window.fixed(-20.0, 150.0)
    assert session.window == (-20.0, 150.0)
    image.contrast_limits = (0.0, 100.0)  # a new Start picks up the new limits
    assert _start(qtbot, widget).window == (0.0, 100.0)


def test_start_creates_layers_with_the_image_geometry(make_napari_viewer, qtbot) -> None:
    viewer, image, widget = _make(make_napari_viewer)
    image.metadata["affine"] = np.diag([-1.0, -1.0, 2.0, 1.0])
    session = _start(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert names[1:] == [
        "fmseg labels", "fmseg object", "fmseg box", "fmseg scribbles", "fmseg prompts"
    ]  # fmt: skip
    labels = widget.layers["labels"]
    assert all(tuple(widget.layers[k].scale) == (2.0, 1.0, 1.0) for k in ("box", "scribbles"))
    assert tuple(labels.scale) == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(labels.metadata["affine"], image.metadata["affine"])
    assert np.shares_memory(labels.data, session.labels)
    assert session.spacing == (2.0, 1.0, 1.0)
    assert all(session.is_embedded(0, i) for i in range(10))  # background embedding ran


def test_box_makes_an_object_mask_on_its_slice(make_napari_viewer, qtbot) -> None:
    viewer, _, widget = _make(make_napari_viewer)
    session = _start(qtbot, widget)
    _boxed(qtbot, viewer, widget, z=4)
    obj = _object(widget)
    assert obj[4, 15:34, 13:36].all() and obj[4].sum() == 19 * 23
    assert not obj[[3, 5]].any()
    np.testing.assert_array_equal(obj.astype(bool), session.mask)
    assert "slice 4" in widget.status.value
    widget.layers["box"].add_rectangles(_rect(4, 20, 20, 40, 40))  # a new box replaces it
    qtbot.waitUntil(lambda: _object(widget)[4].sum() == 15 * 15, timeout=WAIT_MS)
    _idle(qtbot, widget)
    assert len(widget.layers["box"].data) == 1


def test_clicks_positive_and_negative(make_napari_viewer, qtbot) -> None:
    viewer, _, widget = _make(make_napari_viewer)
    session = _start(qtbot, widget)
    viewer.dims.set_current_step(0, 6)
    points = widget.layers["points"]
    points.add([6, 20, 20])
    qtbot.waitUntil(lambda: _object(widget)[6].sum() == 81, timeout=WAIT_MS)
    _idle(qtbot, widget)
    widget.toggle_negative()
    assert widget._negative.value and widget._tool.value == "click"
    points.add([6, 20, 24])  # a negative click overlapping the positive square
    qtbot.waitUntil(lambda: _object(widget)[6].sum() < 81, timeout=WAIT_MS)
    _idle(qtbot, widget)
    assert points.features["positive"].tolist() == [True, False]
    assert session.prompts[(0, 6)].points[1].positive is False
    points.data = np.zeros((0, 3))  # deleting the clicks clears the slice
    qtbot.waitUntil(lambda: not _object(widget)[6].any(), timeout=WAIT_MS)
    _idle(qtbot, widget)


def test_commit_writes_labels_and_undo_restores(make_napari_viewer, qtbot, errors) -> None:
    viewer, _, widget = _make(make_napari_viewer)
    session = _start(qtbot, widget)
    _boxed(qtbot, viewer, widget, z=5)
    expected = session.mask.copy()
    widget._label.value = 3
    _run(qtbot, widget, widget.commit)  # a whole-volume pass: in a worker
    labels = widget.layers["labels"].data
    np.testing.assert_array_equal(labels == 3, expected)
    assert not _object(widget).any() and not session.mask.any()
    assert len(widget.layers["box"].data) == 0 and not session.prompts
    assert "Committed 437 voxels as label 3" in widget.status.value
    _run(qtbot, widget, widget.undo)
    assert not widget.layers["labels"].data.any()
    assert widget.status.value == "Undid commit label 3."
    np.testing.assert_array_equal(_object(widget).astype(bool), expected)  # the object is back
    assert len(widget.layers["box"].data) == 1 and session.prompts[(0, 5)].box is not None
    _run(qtbot, widget, widget.undo)  # the box
    assert not session.mask.any() and not len(widget.layers["box"].data)
    widget.undo()
    assert errors == ["nothing to undo"] and not widget.busy


def test_restart_keeps_committed_labels(make_napari_viewer, qtbot) -> None:
    viewer, _, widget = _make(make_napari_viewer)
    first = _start(qtbot, widget)
    _boxed(qtbot, viewer, widget, z=5)
    _run(qtbot, widget, widget.commit)
    labels = widget.layers["labels"]
    second = _start(qtbot, widget)
    assert second is not first and widget.layers["labels"] is labels
    assert second.labels.sum() == 437 and np.shares_memory(labels.data, second.labels)
    assert [layer.name for layer in viewer.layers].count("fmseg object") == 1


def test_choosing_another_image_restarts(make_napari_viewer, qtbot) -> None:
    viewer, image, widget = _make(make_napari_viewer)
    first = _start(qtbot, widget)
    other = viewer.add_image(_volume((4, 32, 40)), name="other")
    assert [c for c in widget._image.choices] == [image, other]
    widget._image.value = other
    qtbot.waitUntil(lambda: widget.session not in (None, first), timeout=WAIT_MS)
    _idle(qtbot, widget)
    assert widget.image_layer is other and widget.session.volume.shape == (4, 32, 40)
    assert widget.layers["object"].data.shape == (4, 32, 40)
    viewer.layers.remove(other)
    assert widget.session is None and "removed" in widget.status.value
    _idle(qtbot, widget)  # cancelled workers finish their step


def test_labels_save_on_the_image_grid(make_napari_viewer, qtbot, tmp_path) -> None:
    from fmseg.io import load_volume
    from napari_fmseg._io import SAMPLE_CT, sample_ct

    [(data, kwargs, _)] = sample_ct()
    viewer = make_napari_viewer()
    viewer.add_image(data, **kwargs)
    widget = SegmentWidget(viewer, session_factory=OracleFactory())
    _start(qtbot, widget)
    _boxed(qtbot, viewer, widget, z=30)
    _run(qtbot, widget, widget.commit)
    [path] = widget.layers["labels"].save(str(tmp_path / "seg.nii.gz"), plugin="fmseg")
    saved, image = load_volume(path), load_volume(SAMPLE_CT)
    np.testing.assert_allclose(saved.affine, image.affine)
    assert saved.array.shape == image.array.shape == (128, 128, 64)
    assert saved.array[:, :, 30].sum() == 437 and saved.array.sum() == 437


def test_propagation_fills_other_slices(make_napari_viewer, qtbot) -> None:
    viewer, _, widget = _make(make_napari_viewer)
    session = _start(qtbot, widget)
    _boxed(qtbot, viewer, widget, z=5)
    widget.propagate()
    _idle(qtbot, widget)
    obj = _object(widget)
    assert obj.any(axis=(1, 2)).all()  # every slice of the block
    np.testing.assert_array_equal(obj.astype(bool), session.mask)
    assert "Propagated to slices 0-9" in widget.status.value


def test_cancel_stops_propagation(make_napari_viewer, qtbot) -> None:
    factory = OracleFactory()
    viewer, _, widget = _make(make_napari_viewer, factory, volume=_volume((30, 48, 48)))
    _start(qtbot, widget)
    _boxed(qtbot, viewer, widget, z=15)
    factory.delay = 0.2
    widget.propagate()
    qtbot.waitUntil(lambda: widget.status.value.startswith("Propagating:"), timeout=WAIT_MS)
    widget.cancel()
    _idle(qtbot, widget)
    filled = int(_object(widget).any(axis=(1, 2)).sum())
    assert 1 < filled < 30
    assert "cancelled" in widget.status.value


def test_errors_are_shown_not_raised(make_napari_viewer, qtbot, errors) -> None:
    viewer, image, widget = _make(make_napari_viewer)
    widget.commit()
    assert errors[-1].startswith("press Start first")
    _start(qtbot, widget)
    widget.propagate()
    assert "segment the object on this slice" in errors[-1]
    widget.commit()
    assert errors[-1].startswith("nothing to commit")
    viewer.dims.set_current_step(0, 2)
    widget.layers["box"].add_rectangles(_rect(2, 60, 60, 80, 80))  # outside the image
    _idle(qtbot, widget)
    assert "segmentation failed" in errors[-1]
    assert widget.status.value.startswith("Error:")
    image.data = np.zeros((4, 8, 8), np.float32)  # constant: the session refuses it
    _start_fails(qtbot, widget)
    assert "constant" in errors[-1]


def _start_fails(qtbot, widget) -> None:
    widget.start()
    _idle(qtbot, widget)
    assert widget.session is None


def test_2d_image(make_napari_viewer, qtbot) -> None:
    viewer, _, widget = _make(make_napari_viewer, volume=_volume((1, 48, 48))[0])
    session = _start(qtbot, widget)
    assert session.volume.shape == (1, 48, 48) and widget.current_slice() == 0
    widget.layers["box"].add_rectangles(np.array([[12, 10], [12, 38], [36, 38], [36, 10]]))
    qtbot.waitUntil(lambda: _object(widget).any(), timeout=WAIT_MS)
    _idle(qtbot, widget)
    assert _object(widget).shape == (48, 48) and _object(widget).sum() == 19 * 23
    _run(qtbot, widget, widget.commit)
    assert widget.layers["labels"].data.shape == (48, 48)
    assert widget.layers["labels"].data.sum() == 19 * 23


def test_shortcuts_are_bound_to_the_viewer(make_napari_viewer) -> None:
    viewer, _, widget = _make(make_napari_viewer)
    called = []
    for _, _, method in SHORTCUTS:  # handlers look the method up when the key is pressed
        setattr(widget, method, lambda m=method: called.append(m))
    for key, _, _ in SHORTCUTS:
        viewer.keymap[_keybinding(key)](viewer)
    assert called == [m for _, _, m in SHORTCUTS]


def _keybinding(key: str):
    from napari.utils.key_bindings import coerce_keybinding

    return coerce_keybinding(key)


def test_tiny_random_models_end_to_end(make_napari_viewer, qtbot) -> None:
    viewer, _, widget = _make(make_napari_viewer, _tiny_factory, volume=_volume((3, 32, 32)))
    session = _start(qtbot, widget)
    viewer.dims.set_current_step(0, 1)
    widget.layers["box"].add_rectangles(_rect(1, 8, 8, 24, 24))
    qtbot.waitUntil(lambda: (0, 1) in session.last, timeout=WAIT_MS)
    _idle(qtbot, widget)
    np.testing.assert_array_equal(_object(widget).astype(bool), session.mask)


def test_run_work_reports_progress_result_and_errors(qtbot) -> None:
    def work():
        yield Progress(1, 2, "one")
        yield Progress(2, 2, "two")
        return 42

    seen, done, failed = [], [], []
    worker = run_work(work(), on_progress=seen.append, on_done=done.append, start=False)
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        worker.start()
    assert [p.message for p in seen] == ["one", "two"] and done == [42]

    def boom():
        raise RuntimeError("boom")

    worker = run_work(call_work(boom), on_done=done.append, on_error=failed.append, start=False)
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        worker.start()
    assert done == [42]  # superqt alone would have "returned" the RuntimeError
    assert isinstance(failed[0], WorkError) and str(failed[0]) == "boom"


def _tiny_factory(volume, **kwargs) -> Session:
    return Session.from_registry(volume, device="cpu", load=load_tiny, **kwargs)


@pytest.mark.slow
def test_real_litemedsam_segments_the_liver(make_napari_viewer, qtbot) -> None:
    from fmseg.io import load_volume
    from napari_fmseg._io import SAMPLE_DIR, sample_ct

    [(data, kwargs, _)] = sample_ct()
    # the liver with its tumours (label 2 lies inside the liver)
    truth = np.transpose(load_volume(SAMPLE_DIR / "sample_ct_labels.nii.gz").array) > 0
    viewer = make_napari_viewer()
    viewer.add_image(data, **kwargs)
    widget = SegmentWidget(viewer)
    widget.start()
    qtbot.waitUntil(lambda: widget.session is not None, timeout=WAIT_MS)
    z = 32  # a box while the volume is still being embedded in the background
    rows, cols = np.nonzero(truth[z])
    viewer.dims.set_current_step(0, z)
    widget.layers["box"].add_rectangles(_rect(z, rows.min(), cols.min(), rows.max(), cols.max()))
    qtbot.waitUntil(lambda: _object(widget)[z].any(), timeout=WAIT_MS)
    widget.cancel()  # the background embedding of the other slices
    _idle(qtbot, widget)
    got = _object(widget)[z].astype(bool)
    dice = 2 * (got & truth[z]).sum() / (got.sum() + truth[z].sum())
    assert dice > 0.75  # measured 0.80 (LiteMedSAM, tight box, slice 32)
    box = Box(cols.min(), rows.min(), cols.max(), rows.max())
    window = tuple(kwargs["contrast_limits"])  # the widget runs with what the user sees
    direct = Session.from_registry(data, spacing=kwargs["scale"], window=window).set_box(0, z, box)
    np.testing.assert_array_equal(got, direct)  # the widget adds nothing to the core's answer
