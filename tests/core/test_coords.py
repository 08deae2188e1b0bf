"""fmseg.coords: voxel index <-> RAS/LPS/napari conversions on oblique, anisotropic grids."""

from __future__ import annotations

import numpy as np
import pytest
from nibabel.affines import apply_affine as nib_apply_affine
from scipy.spatial.transform import Rotation

from fmseg import coords


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """``Rz(az) @ Ry(ay) @ Rx(ax)``: extrinsic x, y, z rotations in radians."""
    return Rotation.from_euler("xyz", [ax, ay, az]).as_matrix()


SPACING = (0.7, 1.3, 2.5)  # i, j, k
ORIGIN = (-12.0, 40.5, 7.25)
OBLIQUE = coords.ijk_to_world_matrix(ORIGIN, SPACING, rotation(0.2, -0.15, 0.35))


def test_ijk_to_world_matrix_columns_are_scaled_directions():
    dirs = rotation(0.2, -0.15, 0.35)
    m = OBLIQUE
    for a in range(3):
        np.testing.assert_allclose(m[:3, a], dirs[:, a] * SPACING[a])
    np.testing.assert_allclose(m[:3, 3], ORIGIN)


def test_kji_array_index_maps_like_reversed_ijk():
    rng = np.random.default_rng(0)
    kji = rng.uniform(0, 40, size=(20, 3))
    expected = nib_apply_affine(OBLIQUE, kji[:, ::-1])  # reference: nibabel on (i, j, k)
    np.testing.assert_allclose(coords.array_to_world(kji, OBLIQUE), expected, atol=1e-9)
    # voxel (k, j, i) = (0, 0, 1) is one i-step from the origin
    step = coords.array_to_world([0, 0, 1], OBLIQUE) - np.asarray(ORIGIN)
    np.testing.assert_allclose(np.linalg.norm(step), SPACING[0])


def test_ijk_order_is_the_affine_itself():
    pts = np.array([[1.0, 2.0, 3.0], [10.5, -2.0, 0.25]])
    np.testing.assert_allclose(
        coords.array_to_world(pts, OBLIQUE, order="ijk"), nib_apply_affine(OBLIQUE, pts)
    )


@pytest.mark.parametrize("order", ["kji", "ijk"])
def test_world_array_round_trip(order):
    rng = np.random.default_rng(1)
    ras = rng.uniform(-100, 100, size=(50, 3))
    back = coords.array_to_world(coords.world_to_array(ras, OBLIQUE, order), OBLIQUE, order)
    np.testing.assert_allclose(back, ras, atol=1e-9)
    one = coords.world_to_array(ras[0], OBLIQUE, order)
    assert one.shape == (3,)


def test_flipped_lps_like_matrix_round_trip():
    # a grid whose i axis points left and j posterior (negative determinant)
    m = coords.ijk_to_world_matrix((5, 6, 7), (1.0, 0.5, 3.0), np.diag([-1.0, -1.0, 1.0]))
    assert np.linalg.det(m[:3, :3]) > 0  # two flips keep the handedness
    m2 = coords.ijk_to_world_matrix((5, 6, 7), (1.0, 0.5, 3.0), np.diag([-1.0, 1.0, 1.0]))
    assert np.linalg.det(m2[:3, :3]) < 0
    pts = np.array([[3.0, 2.0, 1.0]])
    np.testing.assert_allclose(coords.array_to_world(pts, m2), [[5 - 1.0, 6 + 1.0, 7 + 9.0]])
    np.testing.assert_allclose(coords.world_to_array(coords.array_to_world(pts, m2), m2), pts)


def test_array_spacing_is_reversed_for_kji():
    assert coords.array_spacing(OBLIQUE) == pytest.approx(SPACING[::-1])
    assert coords.array_spacing(OBLIQUE, "ijk") == pytest.approx(SPACING)


def test_ras_lps_flip_first_two_axes_and_invert_each_other():
    p = np.array([[1.0, -2.0, 3.0], [0.0, 5.0, -7.0]])
    np.testing.assert_allclose(coords.ras_to_lps(p), [[-1.0, 2.0, 3.0], [0.0, -5.0, -7.0]])
    np.testing.assert_allclose(coords.lps_to_ras(coords.ras_to_lps(p)), p)


def test_affine_lps_conversion_matches_point_conversion():
    lps_affine = coords.affine_ras_to_lps(OBLIQUE)
    pts = np.array([[1.0, 2.0, 3.0], [4.0, 0.5, 9.0]])
    np.testing.assert_allclose(
        nib_apply_affine(lps_affine, pts), coords.ras_to_lps(nib_apply_affine(OBLIQUE, pts))
    )
    np.testing.assert_allclose(coords.affine_lps_to_ras(lps_affine), OBLIQUE)


def test_slice_axis_follows_views_on_oblique_axial_grid():
    m = coords.ijk_to_world_matrix((0, 0, 0), SPACING, rotation(0.2, 0.1, 0.3))
    assert coords.slice_axis(m, "axial") == 0  # k (array axis 0) is superior
    assert coords.slice_axis(m, "coronal") == 1
    assert coords.slice_axis(m, "sagittal") == 2
    assert coords.slice_axis(m, "axial", order="ijk") == 2


def test_slice_axis_on_sagittal_acquisition():
    # i -> anterior, j -> superior, k -> right: a sagittal stack
    dirs = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float)
    m = coords.ijk_to_world_matrix((0, 0, 0), (1, 1, 4), dirs)
    assert coords.slice_axis(m, "sagittal") == 0  # k
    assert coords.slice_axis(m, "axial") == 1  # j
    assert coords.slice_axis(m, "coronal") == 2  # i
    assert coords.slice_axis(m, (0, 0, -1.0)) == 1  # sign does not matter


def test_slice_axis_rejects_bad_normal():
    with pytest.raises(ValueError, match="unknown view"):
        coords.slice_axis(OBLIQUE, "oblique")
    with pytest.raises(ValueError, match="non-zero"):
        coords.slice_axis(OBLIQUE, (0, 0, 0))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_position_matches_np_take(axis):
    vol = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    pts = np.array([[4, 1, 2], [0, 5, 6], [2, 3, 0]], dtype=float)
    index, xy = coords.slice_position(pts + 0.2, axis)
    for p, i, (x, y) in zip(pts.astype(int), index, xy, strict=True):
        assert i == p[axis]
        assert np.take(vol, i, axis)[int(round(y)), int(round(x))] == vol[tuple(p)]


def test_slice_position_rejects_bad_input():
    with pytest.raises(ValueError):
        coords.slice_position(np.zeros((2, 2)), 0)
    with pytest.raises(ValueError):
        coords.slice_position(np.zeros(3), 3)


def test_napari_world_round_trip_and_plugin_convention():
    # napari_fmseg shows a file array (i, j, k) transposed, with scale = reversed spacing.
    spacing = np.array([0.7, 1.3, 2.5])
    origin = np.array([10.0, -5.0, 3.0])
    affine = coords.ijk_to_world_matrix(origin, spacing)
    data = np.array([[2.0, 3.0, 4.0], [0.5, 0.0, 9.0]])  # (z, y, x) = (k, j, i)
    world = coords.napari_data_to_world(data, spacing[::-1], origin[::-1])
    np.testing.assert_allclose(world, coords.array_to_world(data, affine)[:, ::-1])
    np.testing.assert_allclose(
        coords.napari_world_to_data(world, spacing[::-1], origin[::-1]), data
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.eye(3), "4x4"),
        (np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        (np.vstack([np.eye(4)[:3], [0, 0, 1, 1]]), "last row"),
        (np.full((4, 4), np.nan), "non-finite"),
    ],
)
def test_check_affine_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        coords.array_to_world([0, 0, 0], bad)


def test_apply_affine_rejects_wrong_point_shape():
    with pytest.raises(ValueError):
        coords.apply_affine(np.eye(4), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="order"):
        coords.array_to_world_matrix(np.eye(4), order="xyz")  # type: ignore[arg-type]
