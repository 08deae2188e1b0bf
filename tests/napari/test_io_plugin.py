"""Tests for the napari reader/writer/sample functions (called directly, no viewer)."""

from __future__ import annotations

import importlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from fmseg.io import load_volume
from napari_fmseg import _io

AFFINE = np.array(
    [
        [-0.7, 0.0, 0.0, 90.0],
        [0.0, -0.7, 0.0, 120.0],
        [0.0, 0.0, 2.0, -300.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    data = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def test_get_reader_accepts_only_volumes(ct_file: Path) -> None:
    assert _io.get_reader(str(ct_file)) is not None
    assert _io.get_reader([str(ct_file), "b.NRRD", "c.nii"]) is not None
    assert _io.get_reader("image.png") is None
    assert _io.get_reader([str(ct_file), "notes.txt"]) is None
    assert _io.get_reader([]) is None


def test_reader_reverses_axes_and_keeps_geometry(ct_file: Path) -> None:
    reader = _io.get_reader(str(ct_file))
    assert reader is not None
    [(data, kwargs, layer_type)] = reader(str(ct_file))
    assert layer_type == "image"
    assert data.shape == (3, 4, 5)
    np.testing.assert_array_equal(data, np.transpose(load_volume(ct_file).array))
    assert kwargs["name"] == "ct"
    assert kwargs["scale"] == pytest.approx((2.0, 0.7, 0.7))
    meta = kwargs["metadata"]
    np.testing.assert_allclose(meta["affine"], AFFINE)
    assert meta["source_path"] == str(ct_file)
    assert meta["fmseg_axes_reversed"] is True
    assert meta["source_shape"] == (5, 4, 3)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd"])
def test_reader_writer_round_trip(ct_file: Path, tmp_path: Path, ext: str) -> None:
    [(image, image_kwargs, _)] = _io.read_volumes(str(ct_file))
    labels = (image % 3).astype(np.int32)  # (z, y, x), like a labels layer made on the image
    out = tmp_path / f"seg{ext}"
    written = _io.write_labels(str(out), labels, {"metadata": image_kwargs["metadata"]})
    assert written == [str(out)]

    [(data, kwargs, layer_type)] = _io.read_volumes(str(out))
    assert layer_type == "labels"
    np.testing.assert_array_equal(data, labels)
    np.testing.assert_allclose(kwargs["metadata"]["affine"], AFFINE, atol=1e-6)
    on_disk = load_volume(out)
    assert on_disk.array.shape == (5, 4, 3)
    np.testing.assert_allclose(on_disk.affine, load_volume(ct_file).affine, atol=1e-6)


def test_writer_without_affine_uses_scale_and_warns(tmp_path: Path) -> None:
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 2, 3] = 7
    meta = {"metadata": {}, "scale": (2.0, 0.5, 0.25), "translate": (10.0, 0.0, 0.0)}
    with pytest.warns(UserWarning, match="no 'affine'"):
        [out] = _io.write_labels(str(tmp_path / "l.nii.gz"), labels, meta)
    vol = load_volume(out)
    assert vol.array.shape == (5, 4, 3)
    assert vol.array[3, 2, 1] == 7
    np.testing.assert_allclose(np.diag(vol.affine), [0.25, 0.5, 2.0, 1.0])
    np.testing.assert_allclose(vol.affine[:3, 3], [0.0, 0.0, 10.0])


def test_writer_rejects_shape_mismatch(ct_file: Path, tmp_path: Path) -> None:
    [(_, kwargs, _)] = _io.read_volumes(str(ct_file))
    with pytest.raises(ValueError, match="does not match the image shape"):
        _io.write_labels(str(tmp_path / "x.nii.gz"), np.zeros((3, 4, 4), np.uint8), kwargs)


def test_sample_ct_is_shipped_and_readable() -> None:
    [(data, kwargs, layer_type)] = _io.sample_ct()
    assert layer_type == "image"
    assert data.shape == (64, 128, 128)
    assert data.dtype == np.int16
    assert kwargs["metadata"]["fmseg_axes_reversed"] is True
    assert kwargs["contrast_limits"] == list(_io.CT_WINDOW)
    assert _io.SAMPLE_CT.stat().st_size < 1_500_000
    labels = load_volume(_io.SAMPLE_DIR / "sample_ct_labels.nii.gz")
    assert labels.array.shape == (128, 128, 64)
    assert set(np.unique(labels.array)) == {0, 1, 2}
    np.testing.assert_allclose(labels.affine, kwargs["metadata"]["affine"])


def test_manifest_points_at_existing_functions() -> None:
    manifest = yaml.safe_load((Path(_io.__file__).parent / "napari.yaml").read_text())
    assert manifest["name"] == "fmseg"
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    for command_id in ("fmseg.get_reader", "fmseg.write_labels", "fmseg.sample_ct"):
        module, func = commands[command_id].split(":")
        assert module == "napari_fmseg._io"
        assert callable(getattr(_io, func))
    widgets = {
        w["display_name"]: commands[w["command"]] for w in manifest["contributions"]["widgets"]
    }
    assert widgets == {"fmseg": "napari_fmseg._dock:FmsegDock"}  # one dock, a tab per tool
    for python_name in widgets.values():
        module, name = python_name.split(":")
        assert callable(getattr(importlib.import_module(module), name))
