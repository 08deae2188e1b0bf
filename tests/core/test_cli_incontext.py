import os
import stat

import nibabel as nib
import numpy as np
import pytest

from fmseg.cli import main
from fmseg.cli.common import parse_slices
from fmseg.incontext import SupportSet


def _cone(tmp_path, name, shift=0):
    x, y, z = np.mgrid[:40, :40, :16]
    r = 12 - np.abs(z - 8)
    obj = (x - 20 - shift) ** 2 + (y - 20) ** 2 < r**2
    img = (obj * 80.0 + np.random.default_rng(shift).normal(0, 4, obj.shape)).astype(np.float32)
    aff = np.diag([0.7, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), tmp_path / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(obj.astype(np.uint8), aff), tmp_path / f"{name}_lab.nii.gz")
    return tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_lab.nii.gz", obj


def test_parse_slices():
    assert parse_slices("3,5-7,,9") == [3, 5, 6, 7, 9]
    with pytest.raises(ValueError, match="bad slice list"):
        parse_slices("a-b")


def test_incontext_cli_segments_and_saves_support(tmp_path):
    img, lab, obj = _cone(tmp_path, "a")
    out, sup = tmp_path / "out.nii.gz", tmp_path / "set"
    args = ["incontext", "--support", f"{img}:{lab}:3,8,13", "--query", str(img)]
    args += ["--backend", "interpolation", "--out", str(out), "--save-support", str(sup)]
    assert main(args) == 0
    pred = np.asarray(nib.load(out).dataobj) > 0
    assert 2 * (pred & obj).sum() / (pred.sum() + obj.sum()) > 0.85
    assert np.allclose(nib.load(out).affine, nib.load(img).affine)
    assert len(SupportSet.load(sup)) == 3


def test_incontext_cli_other_volume_with_saved_support(tmp_path):
    img, lab, _ = _cone(tmp_path, "a")
    qimg, _, qobj = _cone(tmp_path, "b", shift=2)
    sup = tmp_path / "set"
    main(
        [
            "incontext",
            "--support",
            f"{img}:{lab}",
            "--query",
            str(img),
            "--backend",
            "nearest",
            "--out",
            str(tmp_path / "o1.nii.gz"),
            "--save-support",
            str(sup),
        ]
    )
    out = tmp_path / "o2.nii.gz"
    prob = tmp_path / "p.nii.gz"
    args = ["incontext", "--load-support", str(sup), "--query", str(qimg), "--backend", "nearest"]
    assert main([*args, "--out", str(out), "--prob-out", str(prob)]) == 0
    pred = np.asarray(nib.load(out).dataobj) > 0
    assert 2 * (pred & qobj).sum() / (pred.sum() + qobj.sum()) > 0.7
    assert nib.load(prob).get_fdata().max() <= 1.0


def test_incontext_cli_errors_are_messages(tmp_path, capsys):
    img, lab, _ = _cone(tmp_path, "a")
    out = tmp_path / "o.nii.gz"
    assert main(["incontext", "--query", str(img), "--out", str(out)]) == 2
    assert "no support slices" in capsys.readouterr().err
    assert (
        main(
            [
                "incontext",
                "--support",
                f"{img}:{lab}:99",
                "--query",
                str(img),
                "--backend",
                "nearest",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "outside" in capsys.readouterr().err
    assert main(["incontext", "--support", f"{img}", "--query", str(img), "--out", str(out)]) == 2
    assert "IMG:MASK" in capsys.readouterr().err
    assert not out.exists()


def test_uncertainty_cli_writes_samples_mean_entropy(tmp_path):
    img, lab, _ = _cone(tmp_path, "a")
    s, m, e = tmp_path / "s.nii.gz", tmp_path / "m.nii.gz", tmp_path / "e.nii.gz"
    args = ["uncertainty", "--support", f"{img}:{lab}:3,6,9,12", "--query", str(img)]
    args += ["--sampler", "nearest+tta", "--k", "3", "--samples", str(s), "--mean", str(m)]
    assert main([*args, "--entropy", str(e)]) == 0
    samples = nib.load(s)
    assert samples.shape == (40, 40, 16, 3)
    assert np.allclose(samples.affine, nib.load(img).affine)
    mean = nib.load(m).get_fdata()
    assert np.allclose(mean, samples.get_fdata().mean(-1), atol=1e-5)
    assert 0 <= nib.load(e).get_fdata().min() and nib.load(e).get_fdata().max() <= 1


def test_uncertainty_cli_needs_an_output(tmp_path, capsys):
    img, lab, _ = _cone(tmp_path, "a")
    assert main(["uncertainty", "--support", f"{img}:{lab}:5", "--query", str(img)]) == 2
    assert "--samples" in capsys.readouterr().err


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    img, lab, _ = _cone(tmp_path, "a")
    out, prob = tmp_path / "out.nii.gz", tmp_path / "prob.nrrd"
    args = ["incontext", "--support", f"{img}:{lab}:3,8,13", "--query", str(img)]
    old = os.umask(umask)
    try:
        assert (
            main([*args, "--backend", "nearest", "--out", str(out), "--prob-out", str(prob)]) == 0
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert stat.S_IMODE(prob.stat().st_mode) == mode


@pytest.fixture
def tiny_backends(monkeypatch):
    """``fmseg incontext`` with tiny random-weight networks (the real weights may be absent)."""
    import fmseg.cli.incontext as cli_incontext
    from fmseg.incontext import build_backend
    from fmseg.registry import load_tiny

    built = []

    def tiny(name, *args, **kwargs):
        built.append(name)
        return build_backend(name, *args, load=load_tiny, **kwargs)

    monkeypatch.setattr(cli_incontext, "build_backend", tiny)
    return built


def test_incontext_cli_defaults_to_auto_and_reports_the_paths(tmp_path, capsys, tiny_backends):
    img, lab, _ = _cone(tmp_path, "a")
    qimg, _, _ = _cone(tmp_path, "b", shift=2)
    out = tmp_path / "out.nii.gz"
    args = ["incontext", "--support", f"{img}:{lab}:3,8", "--out", str(out)]
    assert main([*args, "--query", str(img)]) == 0
    assert tiny_backends == ["auto"]
    err = capsys.readouterr().err.strip().splitlines()
    # 16 slices along z, annotated at 3 and 8 of this very volume: all within reach
    assert err[-1] == "auto: 16 slices on the prior path (annotated slices nearby), 0 in-context"
    assert nib.load(out).shape == (40, 40, 16)
    assert main([*args, "--query", str(qimg)]) == 0  # another volume: no annotation nearby
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "auto: 0 slices on the prior path (annotated slices nearby), 16 in-context"
    )
    assert main([*args, "--query", str(img), "--backend", "nearest"]) == 0
    assert "prior path" not in capsys.readouterr().err  # one-path backends: no report
