"""Tests for napari_fmseg._layers: layer data <-> fmseg prompts and masks (no Qt, no viewer)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fmseg.interactive.prompts import Box, Point, Prompts
from napari_fmseg import _layers as L


def _rect(z: float, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    """Rectangle vertices as napari stores them, (4, 3) (z, y, x), in drawing order."""
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], dtype=float)


def test_points_on_slice_map_zyx_to_column_row() -> None:
    data = np.array([[3, 10, 20], [4, 11, 21], [3.0, 12.5, 22.5]])
    points = L.points_on_slice(data, [True, True, False], 3)
    assert points == (Point(x=20, y=10, positive=True), Point(x=22.5, y=12.5, positive=False))
    assert L.points_on_slice(data, None, 4) == (Point(21, 11, True),)
    assert L.points_on_slice(data, None, 5) == ()
    assert L.points_on_slice(np.zeros((0, 3)), None, 0) == ()


def test_points_rounding_and_2d_data() -> None:
    # napari may place points at fractional z (e.g. with a translate): nearest slice wins
    assert L.slice_indices(np.array([[2.9, 0, 0], [3.4, 0, 0]])).tolist() == [3, 3]
    assert L.points_on_slice(np.array([[5.0, 7.0]]), None, 0) == (Point(7, 5),)
    assert L.as_zyx([]).shape == (0, 3)


def test_box_from_rectangle_vertices_on_its_slice_only() -> None:
    shapes = [_rect(2, 10, 20, 30, 50)]
    assert L.box_on_slice(shapes, 2) == Box(20, 10, 50, 30)
    assert L.box_on_slice(shapes, 3) is None
    # drawn from bottom-right to top-left: still a normalised box
    assert L.box_on_slice([_rect(2, 30, 50, 10, 20)], 2) == Box(20, 10, 50, 30)


def test_last_shape_on_a_slice_is_the_box_and_is_clipped() -> None:
    shapes = [_rect(1, 0, 0, 5, 5), _rect(1, -4, 60, 20, 90), _rect(2, 1, 1, 3, 3)]
    assert L.box_on_slice(shapes, 1) == Box(60, -4, 90, 20)
    assert L.box_on_slice(shapes, 1, shape=(64, 80)) == Box(60, 0, 79, 20)


def test_superseded_shapes_are_older_shapes_on_the_same_slice() -> None:
    shapes = [_rect(1, 0, 0, 5, 5), _rect(2, 0, 0, 5, 5), _rect(1, 1, 1, 6, 6)]
    shapes.append(_rect(1, 2, 2, 7, 7))
    assert L.superseded_shapes(shapes) == [0, 2]
    assert L.superseded_shapes(shapes[:2]) == []
    assert L.superseded_shapes([]) == []


def test_prompts_by_slice_groups_points_and_boxes() -> None:
    points = np.array([[0, 5, 6], [2, 7, 8], [2, 9, 9]])
    shapes = [_rect(2, 1, 1, 20, 20), _rect(4, 2, 2, 6, 6)]
    got = L.prompts_by_slice(points, [True, False, True], shapes, shape=(32, 32))
    assert sorted(got) == [0, 2, 4]
    assert got[0] == Prompts((Point(6, 5),))
    assert got[2] == Prompts((Point(8, 7, False), Point(9, 9)), Box(1, 1, 20, 20))
    assert got[4] == Prompts((), Box(2, 2, 6, 6))
    assert L.prompts_by_slice(np.zeros((0, 3)), None, []) == {}


def test_changed_slices_compares_with_session_prompts() -> None:
    a, b = Prompts((Point(1, 1),)), Prompts(box=Box(0, 0, 5, 5))
    current = {(0, 1): a, (0, 2): b, (0, 3): Prompts(), (1, 7): a}
    wanted = {1: a, 2: Prompts((Point(2, 2),), Box(0, 0, 5, 5)), 5: b}
    # 2 changed, 5 is new; 3 is empty on both sides; axis 1 is ignored
    assert L.changed_slices(wanted, current) == [2, 5]
    assert L.changed_slices({}, current) == [1, 2]
    assert L.changed_slices(wanted, {(0, 1): a, (0, 2): wanted[2], (0, 5): b}) == []


def test_write_slice_in_place() -> None:
    data = np.zeros((3, 4, 5), np.uint8)
    data[1] = 9
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    L.write_slice(data, 1, mask)
    assert data[1].sum() == 4 and data[1, 1, 2] == 1
    assert not data[0].any() and not data[2].any()
    L.write_slice(data, 2, mask, value=7)
    assert set(np.unique(data[2])) == {0, 7}


def test_write_slice_2d() -> None:
    data = np.zeros((4, 5), np.uint16)
    L.write_slice(data, 0, np.ones((4, 5), bool), value=3)
    assert (data == 3).all()
    with pytest.raises(IndexError, match="only slice 0"):
        L.write_slice(data, 1, np.ones((4, 5), bool))


def test_layer_view_shares_memory() -> None:
    vol = np.zeros((1, 4, 5), np.uint16)
    view = L.layer_view(vol, 2)
    view[0, 0] = 5
    assert vol[0, 0, 0] == 5
    assert L.layer_view(vol, 3) is vol


@pytest.mark.parametrize(
    ("n", "start", "expected"),
    [
        (5, 2, [2, 3, 1, 4, 0]),
        (4, 0, [0, 1, 2, 3]),
        (4, 3, [3, 2, 1, 0]),
        (3, 9, [2, 1, 0]),
        (1, 0, [0]),
        (0, 0, []),
    ],
)
def test_embedding_order_starts_at_current_slice(n: int, start: int, expected: list) -> None:
    order = L.embedding_order(n, start)
    assert order == expected
    assert sorted(order) == list(range(n))


def test_point_model_for() -> None:
    assert L.point_model_for("litemedsam") == "litemedsam-points"
    assert L.point_model_for("litemedsam-points") is None
    assert L.point_model_for("sam-vit-b") is None


def _fake_image(shape=(6, 128, 96)) -> SimpleNamespace:
    return SimpleNamespace(
        data=np.zeros(shape),
        ndim=len(shape),
        scale=np.array([2.5, 0.8, 0.8]),
        translate=np.array([10.0, 0.0, 0.0]),
        rotate=np.eye(3),
        shear=np.zeros(3),
        affine=SimpleNamespace(affine_matrix=np.eye(4)),
        metadata={"affine": np.diag([-0.8, -0.8, 2.5, 1.0]), "source_path": "ct.nii.gz"},
    )


def test_layer_kwargs_copy_geometry_and_metadata() -> None:
    image = _fake_image()
    geometry = L.geometry(image)
    assert geometry["scale"] == (2.5, 0.8, 0.8)
    assert geometry["translate"] == (10.0, 0.0, 0.0)
    metadata = L.labels_metadata(image.metadata)
    np.testing.assert_array_equal(metadata["affine"], image.metadata["affine"])
    assert metadata["affine"] is not image.metadata["affine"]  # a copy
    assert metadata["source_path"] == "ct.nii.gz"
    points = L.prompts_layer_kwargs(image)
    assert points["ndim"] == 3 and points["face_color"] == L.POSITIVE
    assert points["size"] == 3.0  # never smaller than 3 pixels
    assert L.box_layer_kwargs(image)["ndim"] == 3
    assert L.object_layer_kwargs(image)["colormap"][1] == L.OBJECT_COLOUR


def _labels(name: str, data: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(name=name, data=data)


def test_preferred_annotations_are_the_users_labels() -> None:
    empty, full = np.zeros((2, 4, 4), np.int32), np.ones((2, 4, 4), np.int32)
    fmseg_empty = _labels(L.LABELS_LAYER, empty)
    users = _labels("annotations", full)
    assert L.preferred_annotations([fmseg_empty, users]) is users  # not the empty output
    committed = _labels(L.LABELS_LAYER, full)
    assert L.preferred_annotations([committed, users]) is users  # the user's first
    painting = _labels("new", empty)
    assert L.preferred_annotations([fmseg_empty, painting]) is painting  # none holds labels
    assert L.preferred_annotations([committed, painting]) is committed  # Segment's labels
    assert L.preferred_annotations([]) is None


def test_choices_exclude_by_name_and_kind() -> None:
    a, b = _labels("a", None), _labels(L.INCONTEXT_LAYER, None)
    assert L.choices([a, b, "not a layer"], SimpleNamespace, L.OUTPUTS) == [("a", a)]


def test_slice_at_maps_world_to_data_and_clips() -> None:
    layer = SimpleNamespace(
        ndim=3, rgb=False, data=np.zeros((10, 4, 6)), world_to_data=lambda p: np.asarray(p) / 2
    )
    assert L.slice_at(layer, (8.9, 3.0, 11.0), 0) == 4
    assert L.slice_at(layer, (8.9, 3.0, 11.0), 2) == 5  # clipped to the last slice
    assert L.slice_at(layer, (-5.0, 0.0, 0.0), 0) == 0
    assert L.slice_at(None, (1.0, 1.0, 1.0), 0) == 0
    assert L.slice_at(SimpleNamespace(ndim=2), (1.0, 1.0), 0) == 0
