import nibabel as nib
import numpy as np

from fmseg.cli import main
from fmseg.cli.app import build_parser
from fmseg.cli.segment import prompts_from_args


def _write(tmp_path):
    vol = np.random.default_rng(0).normal(size=(20, 24, 5)).astype(np.float32)
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    return path


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    assert "litemedsam" in capsys.readouterr().out


def test_missing_prompt_is_an_error_not_a_crash(tmp_path, capsys):
    img = _write(tmp_path)
    assert main(["segment", str(img), "--slice", "2", "--out", str(tmp_path / "m.nii.gz")]) == 2
    assert "give a --box and/or --point" in capsys.readouterr().err
    assert not (tmp_path / "m.nii.gz").exists()


def test_missing_file_is_reported(tmp_path, capsys):
    args = ["segment", str(tmp_path / "nope.nii.gz"), "--slice", "0", "--box", "1", "1", "5", "5"]
    assert main([*args, "--out", str(tmp_path / "m.nii.gz")]) == 2
    assert "fmseg: error" in capsys.readouterr().err


def test_cli_coordinates_are_voxel_indices_of_remaining_axes():
    args = build_parser().parse_args(
        [
            "segment",
            "x.nii",
            "--slice",
            "1",
            "--out",
            "o.nii",
            "--box",
            "1",
            "2",
            "10",
            "20",
            "--point",
            "3",
            "4",
            "--negative-point",
            "5",
            "6",
        ]
    )
    p = prompts_from_args(args)
    # slice rows = first remaining axis (A), columns = second (B): x = B, y = A
    assert (p.box.x0, p.box.y0, p.box.x1, p.box.y1) == (2, 1, 20, 10)
    assert [(q.x, q.y, q.positive) for q in p.points] == [(4, 3, True), (6, 5, False)]
