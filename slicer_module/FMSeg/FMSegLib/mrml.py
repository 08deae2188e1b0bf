"""MRML nodes <-> numpy arrays in the core's ``(K, J, I)`` array index space.

``slicer.util.arrayFromVolume`` returns ``(K, J, I)`` arrays; every array here uses that order,
and every geometry is the volume's ``IJKToRAS`` matrix (see :mod:`fmseg.coords`). These
functions touch the MRML scene, so call them on Slicer's main thread only.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from fmseg import coords


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A ``(4, 4)`` numpy copy of a VTK matrix."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A VTK matrix holding a ``(4, 4)`` array."""
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def ijk_to_ras(volume_node) -> np.ndarray:
    """The volume's ``IJKToRAS`` matrix (node coordinates, without parent transforms)."""
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return matrix_to_array(m)


def node_to_world(node) -> np.ndarray:
    """The ``(4, 4)`` node-to-world matrix of a transformable node.

    Raises:
        ValueError: The node is under a non-linear transform (harden it first).
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise ValueError(f"'{node.GetName()}' is under a non-linear transform: harden it first")
    m = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(parent, None, m)
    return matrix_to_array(m)


def ijk_to_world(volume_node) -> np.ndarray:
    """Voxel ``ijk`` -> world RAS, parent transforms included (where Markups live)."""
    return node_to_world(volume_node) @ ijk_to_ras(volume_node)


def volume_array(volume_node) -> np.ndarray:
    """A ``(K, J, I)`` float32 copy of a scalar volume's voxels.

    Raises:
        ValueError: No volume, or no image data.
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("select a volume with image data")
    return np.array(slicer.util.arrayFromVolume(volume_node), dtype=np.float32)


def display_window(volume_node) -> tuple[float, float] | None:
    """The ``(low, high)`` intensities a volume is shown with (its window/level), or None.

    None when the volume has no scalar display node (never shown) or an empty window.
    """
    display = volume_node.GetDisplayNode()
    if display is None or not hasattr(display, "GetWindowLevelMin"):
        return None
    low, high = float(display.GetWindowLevelMin()), float(display.GetWindowLevelMax())
    return (low, high) if high > low else None


def control_points(markups_node) -> tuple[np.ndarray, list[str]]:
    """World RAS positions ``(N, 3)`` and descriptions of a Markups node's placed points."""
    if markups_node is None:
        return np.zeros((0, 3)), []
    positions, descriptions = [], []
    for i in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(i) != markups_node.PositionDefined:
            continue  # a point still being placed
        p = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(i, p)
        positions.append(p)
        descriptions.append(markups_node.GetNthControlPointDescription(i) or "")
    return np.asarray(positions, dtype=float).reshape(-1, 3), descriptions


def roi_corners(roi_node) -> np.ndarray:
    """``(8, 3)`` world RAS corners of a (possibly rotated) Markups ROI."""
    half = np.asarray(roi_node.GetSize(), dtype=float) / 2
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
    object_to_world = matrix_to_array(roi_node.GetObjectToWorldMatrix())
    return coords.apply_affine(object_to_world, signs * half)


def _check_same_space(volume_node, segmentation_node) -> None:
    if volume_node.GetTransformNodeID() != segmentation_node.GetTransformNodeID():
        raise ValueError(
            f"'{volume_node.GetName()}' and '{segmentation_node.GetName()}' are under different "
            "transforms: put the segmentation under the volume's transform"
        )


def find_segment(segmentation_node, name: str) -> str | None:
    """The ID of the segment called ``name`` (or with that ID), or None."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(name) is not None:
        return name
    return segmentation.GetSegmentIdBySegmentName(name) or None


def labelmap_image(mask: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    """A ``vtkOrientedImageData`` (uint8 0/1) of a ``(K, J, I)`` mask on a volume's grid."""
    k, j, i = mask.shape
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(i, j, k)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = (
        np.asarray(mask, bool).astype(np.uint8).ravel()
    )
    image.SetImageToWorldMatrix(array_to_matrix(ijk_to_ras_matrix))
    return image


def set_segment(segmentation_node, name: str, mask: np.ndarray, volume_node) -> str:
    """Replace (or create) segment ``name`` with a ``(K, J, I)`` mask on the volume's grid.

    Returns:
        The segment ID.

    Raises:
        ValueError: The mask does not match the volume, or the nodes are in different spaces.
    """
    _check_same_space(volume_node, segmentation_node)
    dims = tuple(reversed(volume_node.GetImageData().GetDimensions()))
    if mask.shape != dims:
        raise ValueError(f"mask {mask.shape} does not match volume {dims} (K, J, I)")
    if (
        segmentation_node.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        )
        is None
    ):
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segment_id = find_segment(segmentation_node, name)
    if segment_id is None:
        segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", name)
    image = labelmap_image(mask, ijk_to_ras(volume_node))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(
        image, segmentation_node, segment_id, logic.MODE_REPLACE, image.GetExtent()
    ):
        raise RuntimeError(f"could not write segment '{name}'")
    return segment_id


def segment_array(segmentation_node, name: str, volume_node) -> np.ndarray:
    """Segment ``name`` resampled onto the volume's grid, a ``(K, J, I)`` bool array.

    Raises:
        KeyError: No such segment.
        ValueError: The nodes are in different spaces.
    """
    _check_same_space(volume_node, segmentation_node)
    segment_id = find_segment(segmentation_node, name)
    if segment_id is None:
        raise KeyError(f"'{segmentation_node.GetName()}' has no segment '{name}'")
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    labelmap = slicer.vtkOrientedImageData()
    logic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, labelmap)
    reference = logic.CreateOrientedImageDataFromVolumeNode(volume_node)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled
    ):
        raise RuntimeError(f"could not resample segment '{name}' onto the volume")
    dims = tuple(reversed(resampled.GetDimensions()))
    # a shared labelmap holds several segments under different label values
    value = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    voxels = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(dims)
    return voxels == value


def add_scalar_volume(scene, array: np.ndarray, ijk_to_ras_matrix: np.ndarray, name: str):
    """A new scalar volume node holding a ``(K, J, I)`` array on the given grid."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    fill_volume(node, array, ijk_to_ras_matrix)
    return node


def fill_volume(node, array: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> None:
    """Set a volume node's voxels (``(K, J, I)``) and geometry."""
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
    node.SetIJKToRASMatrix(array_to_matrix(ijk_to_ras_matrix))


def add_volume_sequence(scene, arrays: np.ndarray, ijk_to_ras_matrix: np.ndarray, name: str):
    """A sequence node with one volume per ``arrays[s]`` (``(S, K, J, I)``), and a browser.

    Returns:
        ``(sequence_node, browser_node)``; the browser is None where the scene cannot make
        one (Slicer's core libraries without the Sequences module).
    """
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("sample")
    sequence.SetIndexUnit("")
    for s, array in enumerate(arrays):
        item = slicer.vtkMRMLScalarVolumeNode()
        fill_volume(item, array, ijk_to_ras_matrix)
        sequence.SetDataNodeAtValue(item, str(s))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    if browser is not None:
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    return sequence, browser
