"""Shared helpers of the Slicer tests (imported by name: conftest puts this folder on sys.path)."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core (bash .ci/install-slicer)")
if not hasattr(slicer, "vtkMRMLScene"):  # the unrelated PyPI package also called "slicer"
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

from scipy.spatial.transform import Rotation  # noqa: E402
from vtk import vtkMatrix4x4  # noqa: E402  (slicer-core brings VTK)

from fmseg import coords  # noqa: E402


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """``Rz(az) @ Ry(ay) @ Rx(ax)``: extrinsic x, y, z rotations in radians."""
    return Rotation.from_euler("xyz", [ax, ay, az]).as_matrix()


#: An oblique, anisotropic IJKToRAS: spacing (i, j, k) = (0.8, 0.6, 2.5) mm.
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = rotation(0.25, -0.2, 0.4) @ np.diag([0.8, 0.6, 2.5])
OBLIQUE[:3, 3] = (-30.0, 12.5, 40.0)


def ball(shape=(12, 40, 48), centre=(6, 20, 22), radius=(3.5, 9.0, 11.0)) -> np.ndarray:
    """A ``(K, J, I)`` ellipsoid mask."""
    grid = np.indices(shape, dtype=float)
    r = sum(((g - c) / rr) ** 2 for g, c, rr in zip(grid, centre, radius, strict=True))
    return r <= 1.0


def add_volume(scene, array: np.ndarray, ijk_to_ras: np.ndarray = OBLIQUE, name: str = "vol"):
    """A scalar volume node holding a ``(K, J, I)`` array on the given grid."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
    m = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, ijk_to_ras[r, c])
    node.SetIJKToRASMatrix(m)
    return node


def vtk_ijk_to_ras(node, kji) -> np.ndarray:
    """RAS of a ``(k, j, i)`` index through the node's own VTK matrix (not fmseg.coords)."""
    m = vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    k, j, i = (float(v) for v in kji)
    return np.array(m.MultiplyPoint((i, j, k, 1.0))[:3])


def _matrix(node) -> np.ndarray:
    m = vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _to_vtk(array: np.ndarray) -> vtkMatrix4x4:
    m = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def roi_around(scene, volume, truth, k, margin=2.0):
    """An ROI along the volume's axes around the truth's voxels on slice ``k`` (as drawn in a
    slice view rotated to the volume plane), one slice thick."""
    jj, ii = np.nonzero(truth[k])
    lo = np.array([k - 0.5, jj.min() - margin, ii.min() - margin])
    hi = np.array([k + 0.5, jj.max() + margin, ii.max() + margin])
    m = _matrix(volume)
    orient = np.eye(4)
    orient[:3, :3] = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetAndObserveObjectToNodeMatrix(_to_vtk(orient))
    roi.SetCenter(*vtk_ijk_to_ras(volume, (lo + hi) / 2))
    roi.SetSize(*((hi - lo) * np.array(coords.array_spacing(m)))[::-1])
    return roi


def annotated_logic(scene, phantom, max_slices: int, load=None):
    """``(logic, volume)``: a Logic whose support set holds ``max_slices`` slices of the ball."""
    from FMSegLib.logic import FMSegLogic

    from fmseg.registry import load_tiny

    volume, truth = phantom
    logic = FMSegLogic(scene, load=load or load_tiny)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic.write_segment(seg, "ball", truth, volume)
    logic.add_support(volume, seg, "ball", max_slices=max_slices)
    return logic, volume
