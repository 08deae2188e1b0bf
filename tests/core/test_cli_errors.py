"""A user's mistake ends as one line on stderr and exit code 2, before any model is loaded."""

import argparse
import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import torch

import fmseg.cli.adapt as cli_adapt
import fmseg.cli.incontext as cli_incontext
import fmseg.cli.segment as cli_segment
import fmseg.cli.uncertainty as cli_uncertainty
from fmseg.cli import main

SHAPE = (20, 24, 5)


@pytest.fixture
def image(tmp_path):
    vol = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    return path


@pytest.fixture
def labels(tmp_path):
    lab = np.zeros(SHAPE, np.uint8)
    lab[5:15, 6:18, 1:4] = 1
    path = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(lab, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    return path


@pytest.fixture
def no_models(monkeypatch):
    """Stand-ins for every model loader the commands call; records which ran."""
    loaded = []

    def stand_in(name):
        def record(*args, **kwargs):
            loaded.append(name)
            raise AssertionError(f"{name} ran before the error was found")

        return record

    for module, name in [
        (cli_segment, "Session"),
        (cli_segment, "load_adapter"),
        (cli_incontext, "build_backend"),
        (cli_uncertainty, "build_sampler"),
        (cli_adapt, "train_adapter_iter"),
    ]:
        monkeypatch.setattr(module, name, stand_in(name))
    return loaded


def fails(capsys, argv, *needles):
    """Run the CLI; it must exit 2 with one line naming the problem and no traceback."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("fmseg: error: ")
    assert "Traceback" not in err and "weights_only" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _damaged(tmp_path, image):
    """name -> (file, the words the error must contain)."""
    files = {
        "missing": (tmp_path / "nope.nii.gz", "file not found"),
        "folder": (tmp_path, "it is a folder"),
        "png": (tmp_path / "x.png", "not a NIfTI/NRRD file"),
        "garbage": (tmp_path / "g.nii.gz", "the file is corrupt or not a NIfTI/NRRD file"),
        "text": (tmp_path / "t.nii", "the file is corrupt or not a NIfTI/NRRD file"),
        "nrrd": (tmp_path / "g.nrrd", "the file is corrupt or not a NIfTI/NRRD file"),
        "truncated": (tmp_path / "cut.nii.gz", "the file is corrupt or not a NIfTI/NRRD file"),
        "4d": (tmp_path / "t4.nii", "cannot use image"),
    }
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    (tmp_path / "g.nii.gz").write_bytes(b"garbage" * 20)
    (tmp_path / "t.nii").write_text("hello")
    (tmp_path / "g.nrrd").write_bytes(b"NRRD0004\ntype: float\n" + b"x" * 50)
    whole = gzip.decompress(image.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(whole[: len(whole) // 2])[:-20])
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), files["4d"][0])
    return files


DAMAGED = ["missing", "folder", "png", "garbage", "text", "nrrd", "truncated", "4d"]


@pytest.mark.parametrize("kind", DAMAGED)
def test_segment_names_a_bad_image(tmp_path, image, capsys, no_models, kind):
    path, why = _damaged(tmp_path, image)[kind]
    argv = ["segment", path, "--slice", "2", "--box", "1", "1", "8", "8"]
    fails(capsys, [*argv, "--out", tmp_path / "m.nii.gz"], f"'{path}'", why)
    assert not no_models and not (tmp_path / "m.nii.gz").exists()


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated"])
def test_every_command_names_a_bad_input(tmp_path, image, labels, capsys, no_models, kind):
    bad, why = _damaged(tmp_path, image)[kind]
    out = tmp_path / "o.nii.gz"
    fails(capsys, ["incontext", "--support", f"{image}:{bad}", "--query", image, "--out", out],
          f"cannot read label map '{bad}'", why)  # fmt: skip
    fails(capsys, ["incontext", "--support", f"{image}:{labels}", "--query", bad, "--out", out],
          f"cannot read image '{bad}'", why)  # fmt: skip
    fails(capsys, ["uncertainty", "--support", f"{bad}:{labels}", "--query", image, "--mean", out],
          f"cannot read image '{bad}'", why)  # fmt: skip
    argv = ["adapt", "--train", f"{image}:{bad}:2", "--label", "1", "--out", tmp_path / "a.pt"]
    fails(capsys, argv, f"cannot read label map '{bad}'", why)
    assert not no_models


def _deny(monkeypatch, denied):
    """os.access says no for ``denied`` (the tests may run as root, who reads everything)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path != denied and real(path, mode))


def test_unreadable_image(tmp_path, image, capsys, no_models, monkeypatch):
    _deny(monkeypatch, image)
    argv = ["segment", image, "--slice", "2", "--box", "1", "1", "8", "8"]
    fails(capsys, [*argv, "--out", tmp_path / "m.nii.gz"], "permission denied")


def _adapters(tmp_path):
    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "pickled.pt")  # weights_only refuses
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")  # a checkpoint, not an adapter
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04garbage" * 10)
    (tmp_path / "empty.pt").write_bytes(b"")
    return ["pickled.pt", "other.pt", "garbage.pt", "empty.pt"]


@pytest.mark.parametrize("prompts", [[], ["--slice", "2", "--box", "1", "1", "8", "8"]])
def test_a_corrupt_adapter_is_one_line_without_torch_advice(
    tmp_path, image, capsys, no_models, prompts
):
    for name in _adapters(tmp_path):
        adapter = tmp_path / name
        argv = ["segment", image, *prompts, "--adapter", adapter, "--out", tmp_path / "m.nii.gz"]
        fails(capsys, argv, f"cannot read adapter '{adapter}'", "corrupt or not an fmseg adapter")
    fails(capsys, [*argv[:-3], tmp_path / "nope.pt", "--out", tmp_path / "m.nii.gz"],
          "file not found")  # fmt: skip
    assert not no_models


def test_a_corrupt_support_set(tmp_path, image, capsys, no_models):
    (tmp_path / "set.npz").write_bytes(b"garbage")
    (tmp_path / "set.json").write_text('{"format": "fmseg-support-set", "examples": [{}]}')
    argv = ["incontext", "--load-support", tmp_path / "set", "--query", image]
    fails(capsys, [*argv, "--out", tmp_path / "o.nii.gz"], "cannot read support set", "corrupt")
    (tmp_path / "set.json").write_text("{not json")
    fails(capsys, [*argv, "--out", tmp_path / "o.nii.gz"], "cannot read support set", "corrupt")
    (tmp_path / "set.json").unlink()
    fails(capsys, [*argv, "--out", tmp_path / "o.nii.gz"], "needs both set.npz and set.json")


def _bad_outputs(tmp_path):
    return {
        "no folder": (tmp_path / "absent" / "m.nii.gz", "folder"),
        "a folder": (tmp_path, "is a folder"),
    }


@pytest.mark.parametrize("where", ["no folder", "a folder", "ending"])
def test_bad_outputs_fail_before_any_model(tmp_path, image, labels, capsys, no_models, where):
    bad, why = _bad_outputs(tmp_path).get(where, (tmp_path / "m.png", "unsupported file type"))
    support = ["--support", f"{image}:{labels}", "--query", image]
    fails(capsys, ["segment", image, "--slice", "2", "--box", "1", "1", "8", "8", "--out", bad],
          f"--out '{bad}'", why)  # fmt: skip
    fails(capsys, ["incontext", *support, "--out", bad], f"--out '{bad}'", why)
    ok = tmp_path / "ok.nii.gz"
    fails(capsys, ["incontext", *support, "--out", ok, "--prob-out", bad], "--prob-out", why)
    fails(capsys, ["uncertainty", *support, "--mean", ok, "--entropy", bad], "--entropy", why)
    pt = bad.with_name("a.pt") if where == "no folder" else bad
    argv = ["adapt", "--train", f"{image}:{labels}", "--label", "1", "--out", pt]
    fails(capsys, argv, "--out", why)
    assert not no_models and not ok.exists()


def test_output_endings_per_command(tmp_path, image, labels, capsys, no_models):
    support = ["--support", f"{image}:{labels}", "--query", image]
    fails(capsys, ["uncertainty", *support, "--samples", tmp_path / "s.nrrd"],
          "--samples", "use .nii.gz, .nii")  # fmt: skip
    argv = ["adapt", "--train", f"{image}:{labels}", "--label", "1"]
    fails(capsys, [*argv, "--out", tmp_path / "a.nii.gz"], "--out", "use .pt")
    assert not no_models


def test_read_only_output_folder(tmp_path, image, capsys, no_models, monkeypatch):
    _deny(monkeypatch, tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    argv = ["segment", image, "--slice", "2", "--box", "1", "1", "8", "8"]
    fails(capsys, [*argv, "--out", tmp_path / "ro" / "m.nii.gz"], "is not writable")


@pytest.mark.parametrize(
    ("prompt", "echo"),
    [
        (["--point", "30", "4"], "--point 30 4 is outside slice 2 along axis 2"),
        (["--negative-point", "3.50", "-1"], "--negative-point 3.50 -1 is outside"),
        (["--box", "30", "2", "40", "1e1"], "--box 30 2 40 1e1 does not fit slice 2"),
        (["--box", "4", "2", "4.5", "9"], "--box 4 2 4.5 9 does not fit"),
    ],
)
def test_prompt_errors_echo_the_coordinates_as_typed(
    tmp_path, image, capsys, no_models, prompt, echo
):
    argv = ["segment", image, "--slice", "2", *prompt, "--out", tmp_path / "m.nii.gz"]
    err = fails(capsys, argv, echo, "axis 0 runs 0..19 and axis 1 0..23")
    assert "x=" not in err and "y=" not in err
    assert not no_models


def test_slice_outside_the_volume_is_refused_before_the_model(tmp_path, image, capsys, no_models):
    argv = ["segment", image, "--slice", "9", "--point", "3", "4"]
    fails(capsys, [*argv, "--out", tmp_path / "m.nii.gz"], "slice 9 is outside 0..4 along axis 2")
    assert not no_models


def test_prob_out_with_two_labels_fails_before_the_model(tmp_path, image, capsys, no_models):
    lab = np.zeros(SHAPE, np.uint8)
    lab[5:10, 6:18, 1:4] = 1
    lab[11:15, 6:18, 1:4] = 2
    path = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(lab, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    argv = ["incontext", "--axis", "2", "--support", f"{image}:{path}:1,2", "--query", image]
    argv += ["--out", tmp_path / "o.nii.gz", "--prob-out", tmp_path / "p.nii.gz"]
    fails(capsys, argv, "--prob-out needs exactly one label")
    assert no_models == [] and not (tmp_path / "o.nii.gz").exists()


def test_a_corrupt_checkpoint_is_one_line_without_torch_advice(tmp_path, image, labels, capsys):
    bad = tmp_path / "net.pt"
    torch.save({"x": argparse.Namespace(a=1)}, bad)  # weights_only refuses this pickle
    argv = ["incontext", "--axis", "2", "--support", f"{image}:{labels}:1,2", "--query", image]
    argv += ["--backend", "incontext-small", "--checkpoint", bad, "--out", tmp_path / "o.nii.gz"]
    fails(capsys, argv, "net.pt", "not a readable PyTorch checkpoint")


def test_saved_support_sets_follow_the_umask(tmp_path, image, labels):
    from fmseg.incontext import SupportSet, add_slice

    support = SupportSet()
    vol = nib.load(image).get_fdata()
    add_slice(support, vol, np.asarray(nib.load(labels).dataobj), 2, 2, None)
    old = os.umask(0o022)
    try:
        path = support.save(tmp_path / "set")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.with_suffix(".json").stat().st_mode & 0o777 == 0o644
