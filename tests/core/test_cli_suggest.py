"""``fmseg suggest``: indices best first, ``--json`` with reasons, one-line errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from fmseg.cli import main


def _tube(tmp_path):
    x, y, z = np.mgrid[:32, :32, :30]
    obj = ((x - 16) ** 2 + (y - 16) ** 2 < 64) & (z >= 3) & (z <= 26)
    img = (obj * 80.0 + np.random.default_rng(0).normal(0, 4, obj.shape)).astype(np.float32)
    aff = np.diag([0.7, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(obj.astype(np.uint8), aff), tmp_path / "lab.nii.gz")
    return f"{tmp_path / 'img.nii.gz'}:{tmp_path / 'lab.nii.gz'}"


def test_suggest_prints_indices_best_first(tmp_path, capsys):
    pair = _tube(tmp_path)
    args = ["suggest", "--support", f"{pair}:6,10,22", "--axis", "2", "--backend", "interpolation"]
    assert main([*args, "--top", "3", "--weight", "0"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[0] == "16" and len(lines) == 3  # the middle of the 10..22 gap
    assert main([*args, "--top", "0"]) == 0
    assert len(capsys.readouterr().out.split()) == 30 - 3


def test_suggest_json_has_scores_and_reasons(tmp_path, capsys):
    pair = _tube(tmp_path)
    args = ["suggest", "--support", f"{pair}:6,10,22", "--backend", "interpolation", "--json"]
    assert main([*args, "--top", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["annotated"] == [6, 10, 22] and out["label"] == 1 and out["axis"] == 2
    assert len(out["ranked"]) == 2
    first = out["ranked"][0]
    assert set(first) == {"index", "score", "disagreement", "distance", "inside", "reason"}
    assert "from the nearest" in first["reason"]


def test_suggest_errors_are_one_line(tmp_path, capsys):
    pair = _tube(tmp_path)
    cases = [
        (["--support", f"{pair}:6,10", "--label", "3"], "label 3 is not in the support set"),
        (["--support", f"{pair}:6,x"], "bad slice list"),
        (["--support", f"{tmp_path / 'no.nii.gz'}:{tmp_path / 'lab.nii.gz'}"], "file not found"),
        (["--support", f"{pair}:6", "--top", "-1"], "--top must be 0 or more"),
        (["--support", f"{pair}:6", "--weight", "2"], "--weight must be in [0, 1]"),
        (["--support", f"{pair}:0"], "has no labelled pixel"),
    ]
    for extra, message in cases:
        assert main(["suggest", "--backend", "interpolation", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fmseg: error: ") and message in err[0]
