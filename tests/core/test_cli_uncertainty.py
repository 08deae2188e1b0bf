"""``fmseg uncertainty``: the disagreement and total-uncertainty maps it writes."""

import nibabel as nib
import numpy as np
import pytest

from fmseg import uncertainty as U
from fmseg.cli import main


def _cone(tmp_path):
    x, y, z = np.mgrid[:40, :40, :16]
    obj = (x - 20) ** 2 + (y - 20) ** 2 < (12 - np.abs(z - 8)) ** 2
    img = (obj * 80.0 + np.random.default_rng(0).normal(0, 4, obj.shape)).astype(np.float32)
    aff = np.diag([0.7, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(obj.astype(np.uint8), aff), tmp_path / "a_lab.nii.gz")
    return tmp_path / "a.nii.gz", tmp_path / "a_lab.nii.gz"


@pytest.mark.parametrize("total_flag", ["--total", "--entropy"])
def test_disagreement_and_total_maps(tmp_path, total_flag):
    img, lab = _cone(tmp_path)
    s, d, t = (tmp_path / f"{n}.nii.gz" for n in ("s", "d", "t"))
    args = ["uncertainty", "--support", f"{img}:{lab}:3,6,9,12", "--query", str(img)]
    args += ["--sampler", "nearest+tta", "--k", "4", "--samples", str(s)]
    assert main([*args, "--disagreement", str(d), total_flag, str(t)]) == 0
    samples = np.moveaxis(nib.load(s).get_fdata(), -1, 0)
    disagreement, total = nib.load(d), nib.load(t)
    assert np.allclose(disagreement.affine, nib.load(img).affine)
    np.testing.assert_allclose(
        disagreement.get_fdata(), U.uncertainty_map(samples, "disagreement"), atol=1e-5
    )
    np.testing.assert_allclose(total.get_fdata(), U.uncertainty_map(samples, "total"), atol=1e-5)
    assert disagreement.get_fdata().max() > 0.3  # the candidates differ near the edge
    assert (disagreement.get_fdata() <= total.get_fdata() + 1e-5).all()


def test_disagreement_path_checked_before_compute(tmp_path, capsys):
    img, lab = _cone(tmp_path)
    bad = tmp_path / "missing" / "d.nii.gz"
    argv = ["uncertainty", "--support", f"{img}:{lab}:5", "--query", str(img)]
    assert main([*argv, "--mean", str(tmp_path / "m.nii.gz"), "--disagreement", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--disagreement" in err and "does not exist" in err
    assert not (tmp_path / "m.nii.gz").exists()
    assert main(argv) == 2
    assert "--disagreement, --total" in capsys.readouterr().err


def test_help_states_the_legends(capsys):
    with pytest.raises(SystemExit):
        main(["uncertainty", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "0 = all candidates agree" in out and "--entropy PATH, --total PATH" in out
