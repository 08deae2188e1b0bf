"""FMSegLogic's few-shot adapters on real MRML: segments -> training -> file -> segment.

Tiny random-weight bases (no download): the checks are about data, geometry, files, progress
and errors, not about accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

vtk = pytest.importorskip("vtk", reason="needs slicer-core (bash .ci/install-slicer)")
from slicer_helpers import add_volume, ball, roi_around, rotation  # noqa: E402

from fmseg import Cancelled, Progress, coords, drain  # noqa: E402
from fmseg.adapters import api  # noqa: E402
from fmseg.adapters.facade import labelled_slices  # noqa: E402
from fmseg.adapters.trainer import TrainStep  # noqa: E402
from fmseg.registry import load_tiny  # noqa: E402
from fmseg.window import DEFAULT_WINDOW, Window  # noqa: E402

pytestmark = pytest.mark.slicer

logic_module = pytest.importorskip("FMSegLib.logic")
from FMSegLib import adapters, mrml  # noqa: E402
from FMSegLib.worker import BackgroundTask  # noqa: E402

FMSegLogic = logic_module.FMSegLogic
#: Few fast steps; the learning rate makes the tiny HD-BET probe find the bright ball.
FAST = {"steps": 40, "lr": 0.1, "batch_size": 2, "patch": 32, "augment": False}


@pytest.fixture
def segmented(scene, phantom):
    """The phantom volume, its truth, a logic and a segmentation holding segment "ball"."""
    volume, truth = phantom
    logic = FMSegLogic(scene, load=load_tiny)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    logic.write_segment(seg, "ball", truth, volume)
    return volume, truth, logic, seg


def _train(logic, annotations, path, base, method, **options):
    return drain(logic.train_adapter_iter(annotations, path, base, method, **{**FAST, **options}))


def test_annotation_from_a_segment_uses_the_view_axis_and_its_slices(segmented):
    volume, truth, logic, seg = segmented
    ann = logic.read_annotation(volume, seg, "ball", view="axial")
    filled = tuple(k for k in range(truth.shape[0]) if truth[k].any())
    assert ann.axis == 0 and ann.slices == filled and ann.label == 1
    np.testing.assert_array_equal(ann.labels, truth.astype(np.uint8))
    np.testing.assert_array_equal(ann.image, mrml.volume_array(volume))
    assert ann.spacing == pytest.approx(coords.array_spacing(mrml.ijk_to_ras(volume)))
    axis = logic.view_axis(volume, "sagittal")
    side = logic.read_annotation(volume, seg, "ball", view="sagittal")
    assert side.axis == axis != 0
    assert side.slices == labelled_slices(truth, axis)
    assert logic.read_annotation(volume, seg, "ball", whole=True).slices is None
    logic.write_segment(seg, "empty", np.zeros_like(truth), volume)
    with pytest.raises(ValueError, match="empty"):
        logic.read_annotation(volume, seg, "empty")


def test_hdbet_probe_trains_in_the_worker_and_writes_a_segment_on_the_volume_grid(
    segmented, tmp_path
):
    volume, truth, logic, seg = segmented
    path = tmp_path / "ball-hdbet.pt"
    logic.add_training(volume, seg, "ball")
    work = logic.train_adapter_iter(logic.training, path, "hdbet", "linear-probe", **FAST)
    task = BackgroundTask(work, "training").start()
    assert task.wait(300)
    assert task.error is None and not task.cancelled, task.error
    steps = task.poll()
    train = [s for s in steps if isinstance(s, TrainStep)]
    assert len(train) == FAST["steps"] and train[-1].done == train[-1].total == FAST["steps"]
    assert all(np.isfinite(s.loss) for s in train)
    dice = [s for s in train if s.val_dice is not None]
    assert dice and "validation Dice" in dice[-1].message and "loss" in dice[-1].message
    assert steps[-1].message == "saving the adapter"
    assert task.result.path == path and path.is_file()
    assert task.result.metrics["steps_run"] == FAST["steps"] and "ball-hdbet" in (
        task.result.summary()
    )
    assert not list(tmp_path.glob("*.part"))

    info = logic.read_adapter(path, "hdbet")
    assert (info.base, info.head, info.dims, info.prompted) == ("hdbet", "auto", 3, False)
    mask = drain(logic.apply_adapter_iter(logic.read_volume(volume), info))
    assert mask.shape == truth.shape and mask.dtype == bool
    assert mask.any()  # the probe found part of the ball (Dice 0.46 measured)
    out = scene_segmentation(logic, volume)
    logic.write_segment(out, "ball (adapter)", mask, volume)
    np.testing.assert_array_equal(logic.read_segment(out, "ball (adapter)", volume), mask)
    labelmap = out.GetBinaryLabelmapInternalRepresentation(mrml.find_segment(out, "ball (adapter)"))
    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    np.testing.assert_allclose(mrml.matrix_to_array(m), mrml.ijk_to_ras(volume), atol=1e-6)
    assert logic.undo(out)  # the write is undoable
    assert mrml.find_segment(out, "ball (adapter)") is None


def scene_segmentation(logic, volume):
    """A new segmentation node in the logic's scene."""
    return logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "adapter results")


def test_litemedsam_auto_head_trains_on_two_volumes_and_applies_slice_by_slice(
    scene, segmented, tmp_path
):
    volume, truth, logic, seg = segmented
    # a second volume, rotated otherwise, with another ball: a whole-volume annotation
    other_matrix = np.eye(4)
    other_matrix[:3, :3] = rotation(-0.3, 0.1, 1.2) @ np.diag([0.7, 0.7, 2.0])
    truth2 = ball(centre=(5, 22, 20))
    other = add_volume(scene, truth2 * 180.0 + 5.0, other_matrix, name="other")
    seg2 = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg2")
    logic.write_segment(seg2, "ball", truth2, other)
    assert logic.add_training(volume, seg, "ball") == 1
    assert logic.add_training(other, seg2, "ball", view="coronal", whole=True) == 2
    assert logic.training[1].axis != logic.training[0].axis
    path = tmp_path / "ball-2d.pt"
    result = _train(logic, logic.training, path, "litemedsam", "linear-probe", steps=6)
    assert path.is_file() and len(result.history) == 6
    # a 3D base takes whole volumes whatever their axis (only annotated slices share one)
    drain(logic.train_adapter_iter(logic.training, tmp_path / "3d.pt", "hdbet", steps=2, patch=32))
    info = logic.read_adapter(path, "litemedsam")
    assert (info.head, info.dims, info.method) == ("auto", 2, "linear-probe")
    axis = logic.view_axis(other, "axial")
    mask = drain(logic.apply_adapter_iter(logic.read_volume(other), info, axis))
    assert mask.shape == truth2.shape
    out = scene_segmentation(logic, other)
    logic.write_segment(out, "ball (adapter)", mask, other)
    np.testing.assert_array_equal(logic.read_segment(out, "ball (adapter)", other), mask)


def test_training_uses_the_volumes_display_window_and_the_file_keeps_it(segmented, tmp_path):
    # The window rule of every FMSeg action: what the user sees (the display window/level).
    volume, _, logic, seg = segmented
    plain = logic.read_annotation(volume, seg, "ball")  # no display node yet: the default
    assert plain.window is None and adapters.training_window([plain]) is None
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(200.0, 40.0)  # what the user sees: -60..140
    shown = Window.fixed(-60.0, 140.0)
    assert logic.add_training(volume, seg, "ball") == 1
    assert logic.training[0].window == shown == logic.read_volume(volume).window
    path = tmp_path / "windowed.pt"
    _train(logic, logic.training, path, "litemedsam", "linear-probe", steps=2)
    assert api.read_adapter(path)["window"] == shown.to_dict()
    assert api.load_adapter(path, load=load_tiny).window == shown  # applying uses it
    default = tmp_path / "default-window.pt"
    _train(logic, [plain], default, "litemedsam", "linear-probe", steps=2)
    assert api.load_adapter(default, load=load_tiny).window == DEFAULT_WINDOW


def test_box_head_adapter_is_applied_through_a_session_with_an_roi(segmented, tmp_path):
    volume, truth, logic, seg = segmented
    path = tmp_path / "ball-box.pt"
    ann = logic.read_annotation(volume, seg, "ball")
    _train(logic, [ann], path, "litemedsam", "decoder", steps=4)
    info = logic.read_adapter(path, "litemedsam")
    assert info.prompted and info.dims == 2
    vol = logic.read_volume(volume)
    with pytest.raises(ValueError, match="ROI"):
        drain(logic.apply_adapter_iter(vol, info))
    prompts = logic.read_prompts(volume, "axial", roi=roi_around(logic.scene, volume, truth, 6))
    mask = drain(logic.segment_slice_iter(vol, prompts, adapter=info))
    assert mask.shape == truth.shape[1:]
    session = drain(logic.session_iter(vol, info))
    assert "+adapter:" in session.model_name
    logic.write_slice(seg, "ball (adapter)", volume, prompts, mask)
    got = logic.read_segment(seg, "ball (adapter)", volume)
    np.testing.assert_array_equal(got[6], mask)
    assert not got[:6].any() and not got[7:].any()
    plain = drain(logic.session_iter(vol))  # the prompt path without adapter: a new session
    assert plain is not session and "+adapter" not in plain.model_name


def test_adapters_for_another_base_or_not_adapters_are_refused(segmented, tmp_path):
    volume, truth, logic, seg = segmented
    path = tmp_path / "ball-hdbet.pt"
    _train(logic, [logic.read_annotation(volume, seg, "ball")], path, "hdbet", "linear-probe",
           steps=2)  # fmt: skip
    with pytest.raises(adapters.AdapterError, match="trained for 'hdbet', not for 'litemedsam'"):
        logic.read_adapter(path, "litemedsam")
    wrong = adapters.AdapterFile(str(path), "litemedsam", "decoder", "box", 2)
    prompts = logic.read_prompts(volume, "axial", roi=roi_around(logic.scene, volume, truth, 6))
    with pytest.raises(adapters.AdapterError, match="not for 'litemedsam'"):
        drain(logic.segment_slice_iter(logic.read_volume(volume), prompts, adapter=wrong))
    real = FMSegLogic(logic.scene)  # real weights: a tiny-model adapter does not fit them
    with pytest.raises(adapters.AdapterError, match="other 'hdbet' weights"):
        drain(real.apply_adapter_iter(real.read_volume(volume), real.read_adapter(path)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(adapters.AdapterError, match="not a readable adapter"):
        logic.read_adapter(junk)
    with pytest.raises(adapters.AdapterError, match="choose an adapter file"):
        logic.read_adapter(tmp_path)


def test_cancelled_or_failed_training_writes_no_file(segmented, tmp_path):
    volume, _, logic, seg = segmented
    ann = logic.read_annotation(volume, seg, "ball")
    path = tmp_path / "cancelled.pt"
    seen: list[Progress] = []
    n_train = lambda: sum(isinstance(s, TrainStep) for s in seen)  # noqa: E731
    work = logic.train_adapter_iter([ann], path, "hdbet", "linear-probe", **FAST)
    with pytest.raises(Cancelled):
        drain(work, seen.append, lambda: n_train() >= 3)
    assert n_train() == 3
    task = BackgroundTask(logic.train_adapter_iter([ann], path, "hdbet", "linear-probe", **FAST))
    task.cancel()  # asked before the first step: stops there
    task.start()
    assert task.wait(120) and task.cancelled
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="training set"):
        drain(logic.train_adapter_iter([], path))
    with pytest.raises(ValueError, match="where to save"):
        drain(logic.train_adapter_iter([ann], tmp_path))
    with pytest.raises(ValueError, match="unknown adapter method"):
        drain(logic.train_adapter_iter([ann], path, method="affine-norm"))
    assert list(tmp_path.iterdir()) == []


def test_widget_defaults_train_and_apply_and_the_self_test_passes(scene, segmented, tmp_path):
    # What the Widget's Train / Apply buttons call with the parameter node's defaults
    # (only the steps lowered), then FMSegTest's round trip (FMSegLib.selftest).
    volume, truth, logic, seg = segmented
    path = tmp_path / "default.pt"
    for base in ("litemedsam", "hdbet"):
        ann = logic.read_annotation(volume, seg, "ball")
        trained = drain(logic.train_adapter_iter([ann], str(path), base, "spatial-adapter", 3))
        info = logic.read_adapter(path, base)
        axis = logic.view_axis(volume, "axial")
        mask = drain(logic.apply_adapter_iter(logic.read_volume(volume), info, axis))
        assert trained.path == path and mask.shape == truth.shape
    from FMSegLib import selftest

    lines: list[str] = []
    selftest.round_trip(scene, lines.append, str(tmp_path))
    assert lines == ["segments", "in-context", "uncertainty", "adapter"]


def test_lora_on_the_encoder_with_the_prompt_free_head(segmented, tmp_path):
    pytest.importorskip("peft", reason="LoRA needs peft (pip install peft)")
    volume, truth, logic, seg = segmented
    path = tmp_path / "lora.pt"
    ann = logic.read_annotation(volume, seg, "ball")
    work = logic.train_adapter_iter([ann], path, "litemedsam", "lora", 2, where="encoder")
    drain(work)
    info = logic.read_adapter(path, "litemedsam")
    assert (info.method, info.head) == ("lora", "auto")
    mask = drain(logic.apply_adapter_iter(logic.read_volume(volume), info))
    assert mask.shape == truth.shape


def test_time_limit_reaches_training_and_the_summary(segmented, tmp_path, monkeypatch):
    # The Widget passes the parameter node's adapterTimeLimit; 0 means no limit.
    from fmseg.adapters import trainer
    from fmseg.adapters.facade import CPU_TIME_LIMIT

    volume, _, logic, seg = segmented
    ann = logic.read_annotation(volume, seg, "ball")
    clock = iter(range(10_000))  # a fake clock: one second per reading
    monkeypatch.setattr(trainer, "clock", lambda: float(next(clock)))
    path = tmp_path / "quick.pt"
    opts = {**FAST, "steps": 30}
    trained = drain(
        logic.train_adapter_iter([ann], path, "litemedsam", "linear-probe", time_limit=2.5, **opts)
    )
    assert trained.metrics["steps_run"] == 3 and "stopped by the time limit" in trained.summary()
    unlimited = drain(
        logic.train_adapter_iter([ann], path, "litemedsam", "linear-probe", time_limit=0, **opts)
    )
    assert unlimited.metrics["steps_run"] > 3 and not unlimited.metrics["stopped"]
    # The Widget's default is the core's CPU default (FMSeg.py loads before fmseg exists).
    import ast
    from pathlib import Path

    source = Path(adapters.__file__).parents[1] / "FMSeg.py"
    fields = {
        n.target.id: n.value
        for n in ast.walk(ast.parse(source.read_text()))
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    assert ast.literal_eval(fields["adapterTimeLimit"]) == CPU_TIME_LIMIT
