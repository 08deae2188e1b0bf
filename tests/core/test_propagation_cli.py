"""``fmseg segment --propagate --axes ... --fuse ... --cache-dir``: checks first, then a run."""

import functools

import nibabel as nib
import numpy as np
import pytest

from fmseg.cli import main
from fmseg.interactive.session import Session
from fmseg.registry import load_tiny


def _write(tmp_path):
    vol = np.random.default_rng(0).normal(size=(9, 8, 6)).astype(np.float32)
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    return path


def _args(tmp_path, *extra):
    img = _write(tmp_path)
    box = ["--box", "1", "1", "6", "6"]
    return ["segment", str(img), "--axis", "2", "--slice", "3", *box,
            "--out", str(tmp_path / "m.nii.gz"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--axes", "0,1,2"], "--axes needs --propagate"),
        (["--propagate", "--axes", "0,1"], "must include the prompted axis 2"),
        (["--propagate", "--axes", "0,5"], "axes must be numbers 0, 1 or 2"),
    ],
)
def test_bad_axes_are_refused_before_any_compute(tmp_path, capsys, extra, message):
    assert main(_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "m.nii.gz").exists()


def test_bad_fusion_rule_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(_args(tmp_path, "--propagate", "--axes", "2,0", "--fuse", "mean"))
    assert "invalid choice: 'mean'" in capsys.readouterr().err


def test_fused_run_writes_a_mask_and_fills_the_disk_cache(tmp_path, capsys, monkeypatch):
    real = Session.from_registry.__func__
    monkeypatch.setattr(
        Session, "from_registry", classmethod(functools.partial(real, load=load_tiny))
    )
    cache = tmp_path / "emb"
    args = _args(
        tmp_path, "--propagate", "--axes", "2,0", "--fuse", "or", "--cache-dir", str(cache)
    )
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "propagated and fused (or)" in err and "axis 2:" in err
    assert (tmp_path / "m.nii.gz").is_file()
    assert len(list(cache.glob("*/*.pt"))) >= 1  # at least the prompted slice was kept
