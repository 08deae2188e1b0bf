"""FMSegLib.mrml / markups on real MRML nodes: segments, markups -> prompts, .seg.nrrd files."""

from __future__ import annotations

import numpy as np
import pytest
from slicer_helpers import OBLIQUE, add_volume, ball, slicer, vtk_ijk_to_ras

from fmseg import Box, coords

pytestmark = pytest.mark.slicer

mrml = pytest.importorskip("FMSegLib.mrml")
from FMSegLib import markups  # noqa: E402


def test_volume_array_and_matrix_read_back(scene):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    node = add_volume(scene, array)
    np.testing.assert_array_equal(mrml.volume_array(node), array)
    np.testing.assert_allclose(mrml.ijk_to_ras(node), OBLIQUE, atol=1e-9)
    # fmseg.coords (kji) agrees with VTK's own matrix-vector product
    for kji in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        np.testing.assert_allclose(
            coords.array_to_world(kji, mrml.ijk_to_ras(node)), vtk_ijk_to_ras(node, kji), atol=1e-9
        )


def test_segment_written_on_oblique_grid_lands_on_the_same_voxels(scene):
    truth = ball()
    volume = add_volume(scene, truth * 1.0)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segment_id = mrml.set_segment(seg, "ball", truth, volume)
    np.testing.assert_array_equal(mrml.segment_array(seg, "ball", volume), truth)
    # an independent read: Slicer's own export of the segment to a labelmap on the volume grid
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    import vtk

    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.ExportSegmentsToLabelmapNode(seg, ids, labelmap, volume)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap) > 0, truth)


def test_shared_labelmap_segments_are_read_separately(scene):
    a, b = ball(centre=(6, 12, 12), radius=(2, 5, 5)), ball(centre=(6, 28, 32), radius=(2, 5, 5))
    volume = add_volume(scene, np.zeros(a.shape))
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    mrml.set_segment(seg, "a", a, volume)
    mrml.set_segment(seg, "b", b, volume)
    seg.GetSegmentation().CollapseBinaryLabelmaps(False)  # one layer, two label values
    assert seg.GetSegmentation().GetNumberOfLayers() == 1
    np.testing.assert_array_equal(mrml.segment_array(seg, "a", volume), a)
    np.testing.assert_array_equal(mrml.segment_array(seg, "b", volume), b)
    with pytest.raises(KeyError, match="no segment 'c'"):
        mrml.segment_array(seg, "c", volume)


def test_segment_rejects_wrong_shape_and_different_transforms(scene):
    volume = add_volume(scene, np.zeros((4, 5, 6)))
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    with pytest.raises(ValueError, match="does not match"):
        mrml.set_segment(seg, "x", np.zeros((6, 5, 4), bool), volume)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ValueError, match="different transforms"):
        mrml.set_segment(seg, "x", np.zeros((4, 5, 6), bool), volume)


def _fiducials(scene, ras_points, descriptions=None):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    for n, p in enumerate(ras_points):
        node.AddControlPoint(float(p[0]), float(p[1]), float(p[2]), f"p{n}")
        if descriptions:
            node.SetNthControlPointDescription(n, descriptions[n])
    return node


def test_points_become_prompts_at_their_array_indices(scene):
    volume = add_volume(scene, np.zeros((12, 40, 48)))
    # (k, j, i) indices, placed in RAS through VTK's matrix
    pos_kji = [(5, 10.0, 20.0), (5.2, 30.0, 7.0)]
    neg_kji = [(4.9, 3.0, 44.0)]
    off_slice = (9, 1.0, 1.0)
    positive = _fiducials(
        scene,
        [vtk_ijk_to_ras(volume, p) for p in [*pos_kji, neg_kji[0]]],
        ["", "", "negative"],
    )
    negative = _fiducials(scene, [vtk_ijk_to_ras(volume, off_slice)])
    sp = markups.prompts_from_markups(volume, 0, positive, negative)
    assert (sp.axis, sp.index, sp.ignored) == (0, 5, 1)
    got = [(round(p.x, 6), round(p.y, 6), p.positive) for p in sp.prompts.points]
    assert got == [(20.0, 10.0, True), (7.0, 30.0, True), (44.0, 3.0, False)]
    assert sp.prompts.box is None


def test_points_under_a_transform_use_world_coordinates(scene):
    volume = add_volume(scene, np.zeros((12, 40, 48)))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (15.0, -4.0, 7.5)
    transform.SetMatrixTransformToParent(mrml.array_to_matrix(shift))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    world = coords.apply_affine(shift, vtk_ijk_to_ras(volume, (3, 12, 30)))
    sp = markups.prompts_from_markups(volume, 0, _fiducials(scene, [world]))
    assert sp.index == 3
    assert (sp.prompts.points[0].x, sp.prompts.points[0].y) == pytest.approx((30, 12))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_roi_aligned_with_the_volume_gives_the_expected_box(scene, axis):
    volume = add_volume(scene, np.zeros((12, 40, 48)))
    centre_kji = np.array([6.0, 20.0, 24.0])
    half_kji = np.array([2.0, 8.0, 10.0])  # half-size in voxels along k, j, i
    spacing_kji = np.array(coords.array_spacing(OBLIQUE))
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    orient = np.eye(4)
    orient[:3, :3] = OBLIQUE[:3, :3] / np.linalg.norm(OBLIQUE[:3, :3], axis=0)  # i, j, k dirs
    roi.SetAndObserveObjectToNodeMatrix(mrml.array_to_matrix(orient))
    roi.SetCenter(*vtk_ijk_to_ras(volume, centre_kji))
    roi.SetSize(*(2 * half_kji * spacing_kji)[::-1])  # ROI axes are i, j, k
    sp = markups.prompts_from_markups(volume, axis, roi_node=roi)
    assert sp.index == int(centre_kji[axis])
    rest = [a for a in range(3) if a != axis]  # rows, columns
    lo, hi = centre_kji - half_kji, centre_kji + half_kji
    expected = Box(lo[rest[1]], lo[rest[0]], hi[rest[1]], hi[rest[0]])
    for got, want in zip(
        (sp.prompts.box.x0, sp.prompts.box.y0, sp.prompts.box.x1, sp.prompts.box.y1),
        (expected.x0, expected.y0, expected.x1, expected.y1),
        strict=True,
    ):
        assert got == pytest.approx(want, abs=1e-6)


def test_roi_is_clipped_and_missing_prompts_are_errors(scene):
    volume = add_volume(scene, np.zeros((12, 40, 48)))
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(*vtk_ijk_to_ras(volume, (6, 0, 0)))
    roi.SetSize(30.0, 30.0, 30.0)
    box = markups.prompts_from_markups(volume, 0, roi_node=roi).prompts.box
    assert box.x0 == 0 and box.y0 == 0 and box.x1 < 47 and box.y1 < 39
    with pytest.raises(ValueError, match="at least one point"):
        markups.prompts_from_markups(volume, 0)
    far = _fiducials(scene, [vtk_ijk_to_ras(volume, (40, 5, 5))])
    with pytest.raises(ValueError, match="outside"):
        markups.prompts_from_markups(volume, 0, far)


def test_seg_nrrd_round_trip_with_slicerio(scene, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    truth = ball()
    volume = add_volume(scene, truth * 1.0)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    mrml.set_segment(seg, "ball", truth, volume)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    path = tmp_path / "ball.seg.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(seg)
    read = slicerio.read_segmentation(str(path))
    mask = slicerio.segment_mask(read, "ball")  # (i, j, k) over the file's extent
    ijk_to_ras = coords.affine_lps_to_ras(np.asarray(read["ijkToLPS"]))
    # every voxel of the file lands, in RAS, on a truth voxel of the oblique volume
    ijk = np.argwhere(mask)
    kji = np.rint(coords.world_to_array(coords.array_to_world(ijk, ijk_to_ras, "ijk"), OBLIQUE))
    assert len(ijk) == truth.sum()
    assert truth[tuple(kji.astype(int).T)].all()
