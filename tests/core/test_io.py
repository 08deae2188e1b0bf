"""Tests for fmseg.io: NIfTI/NRRD reading, label writing, atomic writes and error messages."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from fmseg import io as fio
from fmseg.io import Volume, load_volume, save_labels, save_volume

AFFINE = np.array(
    [
        [-0.8, 0.0, 0.0, 10.0],
        [0.0, -0.8, 0.0, -20.0],
        [0.0, 0.0, 2.5, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _image(shape: tuple[int, ...] = (6, 5, 4), dtype: type = np.int16) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) - 20).astype(dtype)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz", "CT.NII.GZ"])
def test_load_nifti_keeps_array_order_and_affine(tmp_path: Path, name: str) -> None:
    data = _image()
    vol = load_volume(_write_nifti(tmp_path / name, data))
    assert isinstance(vol, Volume)
    assert vol.array.shape == (6, 5, 4)
    np.testing.assert_array_equal(vol.array, data)
    np.testing.assert_allclose(vol.affine, AFFINE)
    assert vol.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert vol.path == tmp_path / name


def test_volume_is_frozen(tmp_path: Path) -> None:
    vol = load_volume(_write_nifti(tmp_path / "a.nii.gz", _image()))
    with pytest.raises(AttributeError):
        vol.affine = np.eye(4)  # type: ignore[misc]


def test_trailing_singleton_axis_is_dropped(tmp_path: Path) -> None:
    vol = load_volume(_write_nifti(tmp_path / "a.nii.gz", _image((6, 5, 4, 1))))
    assert vol.array.shape == (6, 5, 4)


def test_load_nrrd_lps_is_converted_to_ras(tmp_path: Path) -> None:
    data = _image()
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.8, 0.8, 2.5]),
        "space origin": np.array([-10.0, 20.0, 30.0]),
    }
    path = tmp_path / "ct.nrrd"
    nrrd.write(str(path), data, header, index_order="F")
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.array, data)
    np.testing.assert_allclose(vol.affine, AFFINE)
    assert vol.spacing == pytest.approx((0.8, 0.8, 2.5))


def test_load_nrrd_without_space_uses_spacings(tmp_path: Path) -> None:
    path = tmp_path / "plain.nrrd"
    nrrd.write(str(path), _image(), {"spacings": [2.0, 3.0, 4.0]}, index_order="F")
    vol = load_volume(path)
    np.testing.assert_allclose(vol.affine, np.diag([2.0, 3.0, 4.0, 1.0]))


@pytest.mark.parametrize("name", ["lab.nii.gz", "lab.nii", "lab.nrrd"])
def test_labels_round_trip_keeps_values_dtype_and_affine(tmp_path: Path, name: str) -> None:
    labels = np.zeros((6, 5, 4), dtype=np.int64)
    labels[1:3, 2:4, 1] = 1
    labels[4, 0, 3] = 2
    out = save_labels(tmp_path / name, labels, AFFINE, reference_shape=(6, 5, 4))
    vol = load_volume(out)
    assert vol.array.dtype == np.uint8
    np.testing.assert_array_equal(vol.array, labels)
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-6)


def test_labels_above_255_are_uint16(tmp_path: Path) -> None:
    labels = np.zeros((3, 3, 3), dtype=np.int32)
    labels[0, 0, 0] = 300
    vol = load_volume(save_labels(tmp_path / "big.nii.gz", labels, np.eye(4)))
    assert vol.array.dtype == np.uint16
    assert vol.array.max() == 300


def test_bool_labels_are_written_as_uint8(tmp_path: Path) -> None:
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[1, 1, 1] = True
    vol = load_volume(save_labels(tmp_path / "m.nrrd", mask, np.eye(4)))
    assert vol.array.dtype == np.uint8
    assert vol.array.sum() == 1


def test_save_volume_round_trip_float(tmp_path: Path) -> None:
    prob = np.linspace(0, 1, 60, dtype=np.float64).reshape(5, 4, 3)
    for name in ("p.nii.gz", "p.nrrd"):
        vol = load_volume(save_volume(tmp_path / name, prob, AFFINE))
        assert vol.array.dtype == np.float32
        np.testing.assert_allclose(vol.array, prob, atol=1e-6)
        np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-6)


def test_failed_write_leaves_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "labels.nii.gz"
    save_labels(path, np.ones((3, 3, 3), dtype=np.uint8), np.eye(4))
    before = path.read_bytes()

    def broken_write(tmp: Path, array: np.ndarray, affine: np.ndarray) -> None:
        tmp.write_bytes(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(fio, "_write_nifti", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_labels(path, np.zeros((3, 3, 3), dtype=np.uint8), np.eye(4))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.mha"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"Unsupported file type.*\.nii\.gz"):
        load_volume(path)
    with pytest.raises(ValueError, match="Unsupported file type"):
        save_labels(tmp_path / "out.png", np.zeros((2, 2, 2), np.uint8), np.eye(4))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found") as info:
        load_volume(tmp_path / "nope.nii.gz")
    assert isinstance(info.value, FileNotFoundError)
    assert "nope.nii.gz" in str(info.value)


def test_4d_data_is_rejected_with_shape(tmp_path: Path) -> None:
    path = _write_nifti(tmp_path / "fmri.nii.gz", _image((4, 4, 3, 2)))
    with pytest.raises(ValueError, match=r"4D data of shape \(4, 4, 3, 2\)"):
        load_volume(path)


def test_2d_data_is_rejected_with_shape(tmp_path: Path) -> None:
    path = tmp_path / "slice.nrrd"
    nrrd.write(str(path), _image((6, 5)), index_order="F")
    with pytest.raises(ValueError, match=r"2D data of shape \(6, 5\)"):
        load_volume(path)


def test_nan_and_inf_are_counted(tmp_path: Path) -> None:
    data = np.zeros((4, 4, 4), dtype=np.float32)
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    path = _write_nifti(tmp_path / "bad.nii.gz", data)
    with pytest.raises(ValueError, match="3 NaN and 1 infinite"):
        load_volume(path)


def test_save_labels_validates_shape_and_values(tmp_path: Path) -> None:
    out = tmp_path / "l.nii.gz"
    with pytest.raises(ValueError, match=r"does not match the image shape \(4, 4, 4\)"):
        save_labels(out, np.zeros((4, 4, 3), np.uint8), np.eye(4), reference_shape=(4, 4, 4))
    with pytest.raises(ValueError, match="must be 3D"):
        save_labels(out, np.zeros((4, 4), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="non-negative"):
        save_labels(out, -np.ones((2, 2, 2), np.int16), np.eye(4))
    with pytest.raises(ValueError, match="whole numbers"):
        save_labels(out, np.full((2, 2, 2), 0.5), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        save_labels(out, np.zeros((2, 2, 2), np.uint8), np.eye(3))
    with pytest.raises(ValueError, match="does not exist"):
        save_labels(tmp_path / "missing" / "l.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert not out.exists()
