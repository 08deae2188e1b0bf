"""DICOM series: geometry (LPS -> RAS), slice order, rescale, errors; CLI and napari reader.

Series are written by the test with pydicom, with a known geometry; the TotalSegmentator
series in the corpus archive (skipped when absent) is checked against the label NIfTI that
ships beside it (converted by another tool, dcm2niix).
"""

import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from fmseg.cli import main  # noqa: E402
from fmseg.cli.common import CliError  # noqa: E402
from fmseg.cli.files import read_volume  # noqa: E402
from fmseg.dicom import is_dicom, load_dicom_series  # noqa: E402
from fmseg.io import load_volume  # noqa: E402
from napari_fmseg._io import get_reader  # noqa: E402

# An oblique series: rows run along (cos a, sin a, 0), columns perpendicular, tilted by t.
A, T = np.deg2rad(20.0), 0.3
ROW = np.array([np.cos(A), np.sin(A), 0.0])
COL = np.array([-np.sin(A) * np.cos(T), np.cos(A) * np.cos(T), -np.sin(T)])
NORMAL = np.cross(ROW, COL)
ORIGIN = np.array([-120.0, 35.5, 410.0])
ROW_SPACING, COL_SPACING, GAP = 0.7, 0.45, 2.5  # PixelSpacing = [between rows, between cols]
ROWS, COLS, N = 6, 9, 5


def _slice(folder, k, pixels, series_uid, name=None, position=None, slope=2.0, intercept=-1024):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series_uid, "1.2.3"
    ds.InstanceNumber = k + 1
    pos = ORIGIN + k * GAP * NORMAL if position is None else position
    ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*ROW, *COL)]
    ds.PixelSpacing = [ROW_SPACING, COL_SPACING]
    ds.SliceThickness = GAP
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.astype("<i2").tobytes()
    # file names in reverse slice order: the reader must sort by position, not by name
    ds.save_as(folder / (name or f"im{N - k:03d}.dcm"), enforce_file_format=True)


def _series(folder: Path, uid=None, n=N, **kw) -> np.ndarray:
    """Write a series; return the stored pixels ``(slices, rows, cols)``."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    stored = np.arange(n * ROWS * COLS, dtype=np.int16).reshape(n, ROWS, COLS) + 600
    for k in range(n):
        _slice(folder, k, stored[k], uid, **kw)
    return stored


def _lps_to_ras(p):
    return np.array([-p[0], -p[1], p[2]])


def test_geometry_and_values_follow_the_dicom_definition(tmp_path):
    stored = _series(tmp_path / "ct")
    array, affine = load_dicom_series(tmp_path / "ct")
    assert array.shape == (COLS, ROWS, N) and array.dtype == np.int16
    for k, r, c in [(0, 0, 0), (3, 4, 7), (N - 1, ROWS - 1, COLS - 1)]:
        # DICOM: pixel (row r, column c) of slice k lies at IPP_k + c*dc*ROW + r*dr*COL (LPS)
        lps = ORIGIN + k * GAP * NORMAL + c * COL_SPACING * ROW + r * ROW_SPACING * COL
        assert np.allclose(affine @ [c, r, k, 1], [*_lps_to_ras(lps), 1], atol=1e-4)
        assert array[c, r, k] == 2 * stored[k, r, c] - 1024  # RescaleSlope / Intercept
    vol = load_volume(tmp_path / "ct")
    assert np.allclose(vol.spacing, (COL_SPACING, ROW_SPACING, GAP), atol=1e-5)
    assert vol.path == tmp_path / "ct" and np.array_equal(vol.array, array)


def test_one_file_opens_its_series_and_others_in_the_folder_are_left(tmp_path):
    _series(tmp_path / "mixed", uid="1.2.3.1", name=None)
    other = np.ones((ROWS, COLS), np.int16)
    for k in range(3):
        _slice(tmp_path / "mixed", k, other, "1.2.3.2", name=f"other{k}.dcm")
    (tmp_path / "mixed" / "README.txt").write_text("not DICOM")
    with pytest.raises(ValueError, match="holds 2 DICOM series.*open one file"):
        load_dicom_series(tmp_path / "mixed")
    assert load_volume(tmp_path / "mixed" / "other1.dcm").array.shape == (COLS, ROWS, 3)
    assert load_volume(tmp_path / "mixed" / "im001.dcm").array.shape == (COLS, ROWS, N)


def test_fractional_rescale_gives_floats(tmp_path):
    stored = _series(tmp_path / "pet", slope=0.25, intercept=1.5)
    array, _ = load_dicom_series(tmp_path / "pet")
    assert array.dtype == np.float32
    assert np.allclose(array[2, 1, 0], 0.25 * stored[0, 1, 2] + 1.5)


@pytest.mark.parametrize(
    "broken, message",
    [
        ("missing slice", "unevenly spaced"),
        ("duplicate", "share a position"),
        ("empty", "no DICOM image slices"),
    ],
)
def test_inconsistent_series_are_one_clear_error(tmp_path, broken, message):
    folder = tmp_path / "bad"
    if broken == "empty":
        folder.mkdir()
        (folder / "notes.dcm").write_bytes(b"nothing here")
    else:
        _series(folder)
        if broken == "missing slice":
            (folder / "im003.dcm").unlink()
        else:
            _slice(folder, 0, np.zeros((ROWS, COLS), np.int16), "9.9", name="dup.dcm")
            for f in folder.glob("im*.dcm"):  # one series with two slices at one place
                ds = pydicom.dcmread(f)
                ds.SeriesInstanceUID = "9.9"
                ds.save_as(f)
    with pytest.raises(ValueError, match=message) as err:
        load_volume(folder)
    assert "\n" not in str(err.value)


def test_cli_reads_a_dicom_folder_and_names_problems(tmp_path, capsys):
    _series(tmp_path / "ct")
    assert read_volume(str(tmp_path / "ct")).array.shape == (COLS, ROWS, N)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CliError, match="it is a folder with no DICOM files"):
        read_volume(str(tmp_path / "empty"))
    (tmp_path / "ct" / "im003.dcm").unlink()
    out = tmp_path / "m.nii.gz"
    argv = ["segment", str(tmp_path / "ct"), "--slice", "1", "--box", "1", "1", "4", "4"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fmseg: error: cannot use image '{tmp_path / 'ct'}': slices are uneven")
    assert len(err.splitlines()) == 1 and not out.exists()


def test_napari_reader_opens_folders_and_dcm_files(tmp_path):
    _series(tmp_path / "chest")
    (tmp_path / "plain").mkdir()
    assert get_reader(str(tmp_path / "plain")) is None
    assert is_dicom(tmp_path / "chest") and not is_dicom(tmp_path / "plain")
    reader = get_reader(str(tmp_path / "chest"))
    [(data, kwargs, kind)] = reader(str(tmp_path / "chest"))
    vol = load_volume(tmp_path / "chest")
    assert kind == "image" and kwargs["name"] == "chest"
    assert np.array_equal(data, vol.array.T)  # napari layers are (z, y, x)
    assert np.allclose(kwargs["metadata"]["affine"], vol.affine)
    assert np.allclose(kwargs["scale"], vol.spacing[::-1])
    files = sorted(str(p) for p in (tmp_path / "chest").glob("*.dcm"))
    layers = get_reader(files)(files)  # a multi-file drop opens the series once
    assert len(layers) == 1 and np.array_equal(layers[0][0], data)


TS = "totalsegmentator-2.18.0/tests/reference_files/"


@pytest.fixture
def ts_series(tmp_path):
    # the corpus cache of this user (tests run with an isolated FMSEG_CACHE)
    tgz = Path.home() / ".cache/fmseg/corpus/archives/totalsegmentator-2.18.0.tar.gz"
    if not tgz.is_file():
        pytest.skip("the TotalSegmentator source archive is not in the corpus cache")
    with tarfile.open(tgz) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(TS + "example_ct_dicom/")]
        members.append(tar.getmember(TS + "example_seg_dicom.nii.gz"))
        tar.extractall(tmp_path, members=members, filter="data")
    return tmp_path / TS


def test_totalsegmentator_series_matches_its_converted_labels(ts_series):
    vol = load_volume(ts_series / "example_ct_dicom")
    seg = nib.load(str(ts_series / "example_seg_dicom.nii.gz"))
    assert vol.array.shape == seg.shape == (512, 512, 20)
    # the same voxel grid in the world: our voxel -> their voxel is a whole-voxel flip/shift
    to_seg = np.linalg.inv(seg.affine) @ vol.affine
    assert np.allclose(to_seg, np.round(to_seg), atol=1e-3)
    perm = np.round(to_seg).astype(int)
    idx = np.indices(vol.array.shape).reshape(3, -1)
    theirs = perm[:3, :3] @ idx + perm[:3, 3:]
    labels = np.asarray(seg.dataobj)[tuple(theirs)].reshape(vol.array.shape)
    # labelled organs lie in the body: tissue, not air (a wrong flip puts a quarter in air)
    assert (vol.array[labels > 0] > -500).mean() > 0.95
    assert vol.array.min() >= -1024 and vol.array.dtype == np.int16  # HU after rescale
