"""``fmseg adapt`` and ``fmseg segment --adapter`` end to end, on tiny random-weight bases."""

import os
import stat

import nibabel as nib
import numpy as np
import pytest

import fmseg.adapters.api as api
from fmseg import Box, Session
from fmseg.cli import main
from fmseg.registry import load_model, load_tiny


@pytest.fixture(autouse=True)
def tiny_bases(monkeypatch):
    def tiny_load(name, checkpoint=None, tiny=False, device=None):
        return load_model(name, tiny=True, device=device)

    monkeypatch.setattr(api, "load_model", tiny_load)
    monkeypatch.setattr(api, "base_fingerprint", lambda *a, **k: "tiny-random")


def _files(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(6, 40, 36)).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[:, 10:25, 8:30] = 2
    img[lab == 2] += 2
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(img, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), tmp_path / "lab.nii.gz")
    return tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"


@pytest.mark.parametrize(
    ("base", "method", "extra"),
    [("litemedsam", "linear-probe", ["--axis", "0"]), ("hdbet", "bitfit", ["--patch", "32"])],
)
def test_adapt_then_segment_whole_volume(tmp_path, capsys, base, method, extra):
    img, lab = _files(tmp_path)
    adapter = tmp_path / "a.pt"
    train = f"{img}:{lab}:1,3,4" if base == "litemedsam" else f"{img}:{lab}"
    args = ["adapt", "--train", train, "--label", "2", "--base", base, "--method", method]
    assert main([*args, *extra, "--steps", "4", "--out", str(adapter)]) == 0
    assert adapter.is_file() and '"steps_run"' in capsys.readouterr().out
    out = tmp_path / "m.nii.gz"
    axis = extra[:2] if base == "litemedsam" else []
    assert main(["segment", str(img), "--adapter", str(adapter), *axis, "--out", str(out)]) == 0
    seg = nib.load(out)
    assert seg.shape == (6, 40, 36) and np.allclose(seg.affine, nib.load(img).affine)
    assert set(np.unique(seg.get_fdata())) <= {0.0, 1.0}


def test_adapt_reports_absent_label(tmp_path, capsys):
    img, lab = _files(tmp_path)
    args = ["adapt", "--train", f"{img}:{lab}", "--label", "9", "--out", str(tmp_path / "a.pt")]
    assert main(args) == 2
    assert "label value 9 does not occur" in capsys.readouterr().err
    assert not (tmp_path / "a.pt").exists()


def test_box_adapter_in_session_and_refusals(tmp_path):
    img, lab = _files(tmp_path)
    adapter = tmp_path / "box.pt"
    train = ["adapt", "--train", f"{img}:{lab}:1,2,3", "--label", "2", "--axis", "0"]
    assert main([*train, "--method", "decoder", "--steps", "3", "--out", str(adapter)]) == 0
    vol = nib.load(img).get_fdata()
    s = Session.from_registry(vol, adapter=str(adapter), load=load_tiny)
    assert "adapter:" in s.model_name
    assert s.set_box(0, 2, Box(8, 10, 30, 25)).shape == (40, 36)
    with pytest.raises(api.AdapterError, match="not for 'sam-vit-b'"):
        Session.from_registry(vol, "sam-vit-b", adapter=str(adapter), load=load_tiny)
    probe = tmp_path / "probe.pt"
    assert main([*train, "--method", "linear-probe", "--steps", "3", "--out", str(probe)]) == 0
    with pytest.raises(ValueError, match="prompt-free head"):
        Session.from_registry(vol, adapter=str(probe), load=load_tiny)


def test_adapt_stores_its_window_and_segment_applies_it(tmp_path):
    img, lab = _files(tmp_path)
    adapter, out, given = tmp_path / "a.pt", tmp_path / "m.nii.gz", tmp_path / "g.nii.gz"
    train = ["adapt", "--train", f"{img}:{lab}:1,3", "--label", "2", "--axis", "0"]
    args = ["--method", "linear-probe", "--steps", "2", "--window", "-1", "3"]
    assert main([*train, *args, "--out", str(adapter)]) == 0
    assert api.read_adapter(adapter)["window"] == {"mode": "fixed", "low": -1.0, "high": 3.0}
    segment = ["segment", str(img), "--adapter", str(adapter), "--axis", "0"]
    assert main([*segment, "--out", str(out)]) == 0
    assert main([*segment, "--window", "-1", "3", "--out", str(given)]) == 0
    np.testing.assert_array_equal(nib.load(out).get_fdata(), nib.load(given).get_fdata())


def test_adapt_refuses_a_head_that_does_not_fit_before_training(tmp_path, capsys):
    img, lab = _files(tmp_path)
    args = ["adapt", "--train", f"{img}:{lab}", "--label", "2", "--out", str(tmp_path / "a.pt")]
    assert main([*args, "--method", "lora", "--where", "both", "--head", "auto"]) == 2
    assert "head='auto' does not fit 'lora' (where='both')" in capsys.readouterr().err
    assert not (tmp_path / "a.pt").exists()


def test_adapter_and_mask_files_follow_the_umask(tmp_path):
    img, lab = _files(tmp_path)
    adapter, out = tmp_path / "a.pt", tmp_path / "m.nii.gz"
    train = ["adapt", "--train", f"{img}:{lab}:1,3", "--label", "2", "--axis", "0", "--steps", "2"]
    old = os.umask(0o022)
    try:
        assert main([*train, "--method", "linear-probe", "--out", str(adapter)]) == 0
        assert (
            main(["segment", str(img), "--adapter", str(adapter), "--axis", "0", "--out", str(out)])
            == 0
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(adapter.stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
