"""GUI tests of the Adapt widget: called through its methods, workers awaited with qtbot.

A 16 x 40 x 40 double cone (a disc whose radius grows then shrinks along z) whose labels are
kept on five slices only (the others unknown, as a clinician would leave them); tiny
random-weight base models, so the tests check the plumbing (training list, live plot, files,
undoable apply, cancel, errors), not accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from napari_helpers import cone

from fmseg.adapters import api, facade
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.facade import labelled_slices
from fmseg.adapters.methods import PEFT_METHODS
from fmseg.adapters.predict import predict_slices_iter
from fmseg.registry import load_tiny
from fmseg.window import Window
from napari_fmseg import _adapter_widget
from napari_fmseg._adapter_widget import OUTPUT_LAYER, AdapterWidget

pytestmark = pytest.mark.gui
WAIT_MS = 120_000
LABELLED = (3, 5, 7, 9, 11)


def _cone() -> tuple[np.ndarray, np.ndarray]:
    volume, labels, _ = cone()
    sparse = np.zeros_like(labels)
    sparse[list(LABELLED)] = labels[list(LABELLED)]
    return volume, sparse


def _make(make_napari_viewer, steps: int = 6, **options):
    viewer = make_napari_viewer()
    volume, labels = _cone()
    image = viewer.add_image(volume, name="image", scale=(2.0, 1.0, 1.0))
    annotations = viewer.add_labels(labels, name="annotations", scale=(2.0, 1.0, 1.0))
    widget = AdapterWidget(viewer, load=load_tiny)
    viewer.window.add_dock_widget(widget)
    assert widget._image.value is image and widget._annotations.value is annotations
    widget._steps.value = steps
    for name, value in options.items():
        getattr(widget, f"_{name}").value = value
    return viewer, widget


def _wait(qtbot, widget) -> None:
    assert widget.busy
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def _train(qtbot, widget) -> None:
    widget.start()
    _wait(qtbot, widget)
    assert widget.adapter is not None, widget.status.value


def test_widget_loads_through_the_manifest(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("fmseg", "fmseg")
    widget = dock.show_tool("Adapt")
    assert isinstance(widget, AdapterWidget)
    assert {"litemedsam", "hdbet"} <= set(widget._base.choices)
    assert widget._method.value == "spatial-adapter" and widget._lr.value == pytest.approx(3e-3)


def test_method_defaults_and_enabled_options(make_napari_viewer) -> None:
    _, widget = _make(make_napari_viewer)
    widget._method.value = "linear-probe"
    assert widget._lr.value == pytest.approx(1e-2)
    assert widget._head.value == "auto" and not widget._head.enabled  # prompt-free
    assert not widget._where.enabled
    widget._method.value = "decoder"  # trains the box-prompted decoder: the box head
    assert widget._lr.value == pytest.approx(1e-4)
    assert widget._head.value == "box" and not widget._head.enabled
    widget._method.value = "lora"
    assert widget._lr.value == pytest.approx(1e-3) and widget._where.enabled
    assert widget._head.value == "box" and not widget._head.enabled  # LoRA on the decoder
    widget._where.value = "encoder"
    assert widget._head.enabled
    widget._head.value = "auto"
    assert widget.config() == AdapterConfig(method="lora", where="encoder", head="auto")
    widget._base.value = "hdbet"
    assert widget._head.value == "auto" and not widget._head.enabled  # 3D: prompt-free
    tooltip = widget._method.native.itemData(0, _adapter_widget.Qt.ItemDataRole.ToolTipRole)
    assert "1x1 conv" in tooltip


def test_where_both_never_pairs_with_the_prompt_free_head(make_napari_viewer) -> None:
    # The core refuses PEFT on both parts with the auto head: the widget must not offer it.
    _, widget = _make(make_napari_viewer)
    for method in PEFT_METHODS:
        widget._method.value = method
        widget._where.value = "encoder"
        widget._head.value = "auto"  # a free choice with PEFT on the encoder only
        assert widget._head.enabled and widget._head.choices == ("auto", "box")
        widget._where.value = "both"
        assert widget._head.value == "box" and not widget._head.enabled
        with pytest.raises(ValueError, match="not a valid choice"):
            widget._head.value = "auto"
        assert widget.config() == AdapterConfig(method=method, where="both", head="box")
        assert widget.config().resolved_head(2) == "box"  # the core accepts it
        widget._where.value = "encoder"  # the choice comes back, in the same order
        assert widget._head.enabled and widget._head.choices == ("auto", "box")
    widget._method.value = "decoder"  # no PEFT part: "PEFT on" is no choice
    assert widget._where.choices == ("decoder",) and not widget._where.enabled


def test_training_list_and_errors(make_napari_viewer, errors) -> None:
    viewer, widget = _make(make_napari_viewer)
    assert labelled_slices(viewer.layers["annotations"].data, 0) == LABELLED
    assert widget.add_pair()
    assert widget.pair_list.item(0).text() == (
        "image / annotations: label 1, axis 0, 5 labelled slices"
    )
    widget._label.value = 5  # absent: a clear message, nothing added, nothing started
    assert not widget.add_pair()
    assert errors[-1] == "label value 5 is absent from 'annotations' (present: [1])"
    assert widget.status.value.startswith("Error: label value 5")
    widget.pairs.clear()
    widget.start()
    assert not widget.busy and widget.status.value.startswith("Error: label value 5")
    widget._label.value = 1
    viewer.layers["annotations"].data[:] = 0
    widget.start()
    assert errors[-1] == "'annotations' has no labelled slice along axis 0" and not widget.busy
    viewer.layers.remove("annotations")
    assert widget.pairs == [] and widget.pair_list.count() == 0


def test_train_plot_save_load_apply_undo(make_napari_viewer, qtbot, tmp_path, errors) -> None:
    viewer, widget = _make(make_napari_viewer, steps=8, method="linear-probe")
    assert widget.add_pair()
    _train(qtbot, widget)
    assert len(widget.history) == widget.metrics["steps_run"] == 8
    assert [s for s, _ in widget.plot.losses] == list(range(1, 9))
    assert widget.plot.dices and all(0 <= d <= 1 for _, d in widget.plot.dices)
    assert widget.info.value.startswith("Adapter: litemedsam, linear-probe, head auto; 8 steps")
    path = tmp_path / "cone.pt"
    assert widget.save_adapter(str(path)) and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["cone.pt"]  # no temporary file left
    trained = widget.adapter
    widget.load_adapter(str(path))
    _wait(qtbot, widget)
    assert widget.adapter is not trained and widget.status.value.startswith("Loaded")
    assert widget.metrics["steps_run"] == 8
    widget._base.value = "hdbet"
    widget.load_adapter(str(path))
    _wait(qtbot, widget)
    assert "trained for 'litemedsam', not for 'hdbet'" in errors[-1]
    assert widget.status.value.startswith("Error: loading the adapter failed")

    with torch.no_grad():  # a random tiny model finds nothing: make it say "all foreground"
        widget.adapter.head.conv.bias.fill_(5.0)
    viewer.dims.set_current_step(0, 7)
    widget.apply_slice()
    _wait(qtbot, widget)
    out = viewer.layers[OUTPUT_LAYER]
    assert out.data.shape == (16, 40, 40) and tuple(out.scale) == (2.0, 1.0, 1.0)
    assert (out.data[7] == 1).all()
    assert not out.data[:7].any() and not out.data[8:].any()  # only the slice in view
    widget._label.value = 3
    widget.apply_volume()
    _wait(qtbot, widget)
    assert (out.data == 3).all() and "(Undo reverts)" in widget.status.value
    widget.undo()
    assert (out.data[7] == 1).all() and not out.data[:7].any() and not out.data[8:].any()
    widget.undo()
    assert not out.data.any()
    assert not viewer.layers["annotations"].data[0].any()  # the annotations are only read


def test_training_window_is_the_images_contrast_limits(make_napari_viewer, qtbot, tmp_path) -> None:
    # The window rule of every fmseg tool (layers.contrast_window): what the clinician sees.
    viewer, widget = _make(make_napari_viewer, steps=2, method="linear-probe")
    viewer.layers["image"].contrast_limits = (-0.3, 1.3)
    assert widget.add_pair()
    volume, labels = _cone()
    other = viewer.add_image(volume, name="other", contrast_limits=(0.2, 0.6))
    widget._image.value = other
    widget._annotations.value = viewer.add_labels(labels, name="other labels")
    assert widget.add_pair() and len(widget.pairs) == 2
    _train(qtbot, widget)  # the first training image's limits, as for a single pair
    shown = Window.fixed(-0.3, 1.3)
    assert widget.adapter.window == shown
    path = tmp_path / "windowed.pt"
    assert widget.save_adapter(str(path))
    assert api.read_adapter(path)["window"] == shown.to_dict()
    assert api.load_adapter(path, load=load_tiny).window == shown  # applying uses it


def test_cancel_keeps_adapter_and_file(make_napari_viewer, qtbot, tmp_path) -> None:
    viewer, widget = _make(make_napari_viewer, steps=4)
    _train(qtbot, widget)
    path = tmp_path / "first.pt"
    assert widget.save_adapter(str(path))
    saved, first = path.read_bytes(), widget.adapter
    widget._steps.value = 100_000
    widget.start()
    assert not widget.save_adapter(str(path))  # refused while training
    qtbot.waitUntil(lambda: len(widget.plot.losses) >= 2, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.status.value == "training cancelled: nothing was changed."
    assert widget.adapter is first and not widget.jobs.bar.visible
    assert path.read_bytes() == saved and [p.name for p in tmp_path.iterdir()] == ["first.pt"]


def test_box_head_needs_a_box(make_napari_viewer, qtbot, errors, monkeypatch) -> None:
    runs: list[list[int]] = []

    def spy(model, volume, axis, slices, boxes, spacing, window=None):
        runs.append(sorted(boxes))
        return predict_slices_iter(model, volume, axis, slices, boxes, spacing, window)

    monkeypatch.setattr(facade, "predict_slices_iter", spy)
    viewer, widget = _make(make_napari_viewer, steps=3, method="decoder")
    _train(qtbot, widget)
    assert widget.adapter.head_kind == "box"
    viewer.dims.set_current_step(0, 7)
    widget.apply_slice()
    assert not widget.busy and "draw a rectangle on the current slice" in errors[-1]
    box = np.array([[7, 8, 8], [7, 8, 32], [7, 32, 32], [7, 32, 8]], float)
    shapes = viewer.add_shapes([box], shape_type="rectangle", scale=(2.0, 1.0, 1.0))
    widget._boxes.value = shapes
    widget.apply_volume()  # only the boxed slice is run
    _wait(qtbot, widget)
    assert runs == [[7]] and widget.status.value.startswith("apply to volume: ")
    out = viewer.layers[OUTPUT_LAYER].data
    assert not out[:7].any() and not out[8:].any()


def test_volumetric_base(make_napari_viewer, qtbot) -> None:
    viewer, widget = _make(make_napari_viewer, steps=4, base="hdbet", method="linear-probe")
    _train(qtbot, widget)
    assert widget.adapter.base_id == "hdbet" and len(widget.history) == 4
    widget.apply_volume()
    _wait(qtbot, widget)
    assert viewer.layers[OUTPUT_LAYER].data.shape == (16, 40, 40)


def test_time_limit_field(make_napari_viewer, qtbot, monkeypatch) -> None:
    from fmseg.adapters import trainer

    viewer, widget = _make(make_napari_viewer, steps=50, method="linear-probe")
    assert widget._time_limit.value == (facade.default_time_limit() or 0)
    assert widget.settings().time_limit == facade.default_time_limit()
    widget._time_limit.value = 0
    assert widget.settings().time_limit is None  # 0: no limit
    widget._time_limit.value = 2.5
    assert widget.settings().time_limit == 2.5
    clock = iter(range(10_000))  # a fake clock: one second per reading
    monkeypatch.setattr(trainer, "clock", lambda: float(next(clock)))
    assert widget.add_pair()
    _train(qtbot, widget)
    assert widget.metrics["steps_run"] == 3 and widget.metrics["stopped"] == "time limit"
    assert "stopped by the time limit" in widget.status.value
