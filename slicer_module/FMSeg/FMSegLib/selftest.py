"""The module's round trip on an MRML scene, with tiny random-weight models (no download).

``FMSegTest`` (in-app, *Reload and Test*) runs it in Slicer; tests/slicer runs the same code on
Slicer's core libraries. No Qt here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import slicer
import vtk

from fmseg import drain
from fmseg.registry import load_tiny

from .logic import FMSegLogic


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def phantom(scene) -> tuple[object, np.ndarray]:
    """An oblique, anisotropic volume node holding a bright ellipsoid, and its mask."""
    grid = np.indices((12, 40, 48), dtype=float)
    truth = ((grid[0] - 6) / 3.5) ** 2 + ((grid[1] - 20) / 9) ** 2 + ((grid[2] - 22) / 11) ** 2 <= 1
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
    slicer.util.updateVolumeFromArray(volume, (truth * 200.0).astype(np.float32))
    transform = vtk.vtkTransform()
    transform.RotateX(14)
    transform.RotateZ(23)
    transform.Scale(0.8, 0.6, 2.5)
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(transform.GetMatrix())
    volume.SetIJKToRASMatrix(matrix)
    return volume, truth


def round_trip(scene, say: Callable[[str], None] = print, folder: str | None = None) -> None:
    """Segment -> undo -> in-context -> uncertainty -> adapter train/apply; raises on failure.

    Args:
        scene: An MRML scene (a fresh one is best: nodes are added).
        say: Receives a line per stage.
        folder: Where the adapter file goes (a temporary folder by default).
    """
    volume, truth = phantom(scene)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = FMSegLogic(scene, load=load_tiny)
    say("segments")
    logic.write_segment(seg, "ball", truth, volume)
    _check(np.array_equal(logic.read_segment(seg, "ball", volume), truth), "segment round trip")
    say("in-context")
    _check(logic.add_support(volume, seg, "ball", max_slices=4) == 4, "support slices")
    result = drain(logic.incontext_iter(logic.read_volume(volume), 0, "interpolation"))
    logic.write_incontext(result, seg, volume)
    got = logic.read_segment(seg, "ball", volume)
    _check(2 * (got & truth).sum() / (got.sum() + truth.sum()) > 0.8, "in-context Dice")
    _check(logic.undo(seg), "undo available")
    _check(np.array_equal(logic.read_segment(seg, "ball", volume), truth), "undo restores")
    say("uncertainty")
    samples = drain(logic.sample_iter(logic.read_volume(volume), 0, "tyche-small", k=2))
    nodes = logic.write_uncertainty(samples, volume, "phantom")
    _check(nodes.samples.GetNumberOfDataNodes() == 2, "sample sequence")
    say("adapter")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = Path(tmp) / "ball.pt"
        logic.add_training(volume, seg, "ball")
        work = logic.train_adapter_iter(logic.training, path, "hdbet", "linear-probe", steps=3)
        _check(drain(work).path == path and path.is_file(), "adapter file written")
        adapter = logic.read_adapter(path, "hdbet")
        mask = drain(logic.apply_adapter_iter(logic.read_volume(volume), adapter))
        logic.write_segment(seg, "ball (adapter)", mask, volume)
        _check(np.array_equal(logic.read_segment(seg, "ball (adapter)", volume), mask), "adapter")
