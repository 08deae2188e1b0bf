"""fmseg.device.choose_device: CUDA, then MPS, then CPU; a clear line; errors for the unusable."""

import argparse
import logging

import pytest
import torch

from fmseg.cli import main
from fmseg.cli.common import device_choice
from fmseg.device import DEVICE_LOG, choose_device
from fmseg.registry import load_model


@pytest.fixture
def machine(monkeypatch):
    """Set what torch reports: ``machine(cuda=N, mps=bool)``."""

    def set_machine(cuda=0, mps=False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Test GPU {i}")
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_machine


@pytest.mark.parametrize(
    "cuda, mps, expected, words",
    [
        (0, False, "cpu", "no CUDA or MPS device found"),
        (0, True, "mps", "Apple GPU"),
        (2, True, "cuda:0", "Test GPU 0"),
    ],
)
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, expected, words):
    machine(cuda=cuda, mps=mps)
    for requested in (None, "auto", "AUTO"):
        device, message = choose_device(requested)
        assert str(device) == expected
        assert message.startswith(f"running on {expected}") and words in message


def test_explicit_devices(machine):
    machine(cuda=2, mps=True)
    assert str(choose_device("cuda:1")[0]) == "cuda:1"
    assert "Test GPU 1" in choose_device("cuda:1")[1]
    assert str(choose_device("mps")[0]) == "mps"
    device, message = choose_device(torch.device("cpu"))
    assert str(device) == "cpu" and "as asked" in message


@pytest.mark.parametrize(
    "requested, cuda, mps, words",
    [
        ("cuda", 0, True, "'cuda' is not available"),
        ("cuda:2", 2, False, "2 CUDA device(s)"),
        ("mps", 1, False, "'mps' is not available"),
        ("tpu", 1, True, "unknown device 'tpu'"),
        ("", 0, False, "unknown device"),
    ],
)
def test_unusable_devices_are_one_clear_error(machine, requested, cuda, mps, words):
    machine(cuda=cuda, mps=mps)
    with pytest.raises(ValueError) as err:
        choose_device(requested)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_cli_device_argument(machine, capsys):
    machine(cuda=0, mps=False)
    assert device_choice("auto") is None and device_choice(" CPU") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="not available"):
        device_choice("cuda")
    with pytest.raises(SystemExit) as stop:
        main(["segment", "x.nii.gz", "--out", "m.nii.gz", "--device", "cuda"])
    assert stop.value.code == 2
    assert "argument --device: device 'cuda' is not available" in capsys.readouterr().err


def test_model_loading_says_where_it_runs(machine, caplog):
    machine(cuda=0, mps=False)
    with caplog.at_level(logging.INFO, logger=DEVICE_LOG):
        model = load_model("litemedsam", tiny=True)
    assert next(model.parameters()).device.type == "cpu"
    assert any("litemedsam: running on cpu" in r.getMessage() for r in caplog.records)


def test_cli_prints_each_device_line_once(monkeypatch, capsys, tmp_path):
    from fmseg.cli import models

    def list_twice():
        load_model("litemedsam", tiny=True, device="cpu")
        load_model("litemedsam-points", tiny=True, device="cpu")

    monkeypatch.setattr(models, "list_models", list_twice)
    assert main(["models"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"fmseg: running on cpu ({torch.get_num_threads()} threads), as asked"]
    load_model("litemedsam", tiny=True, device="cpu")  # outside the CLI: nothing printed
    assert capsys.readouterr().err == ""


def test_describe_says_what_runs():
    from fmseg.device import describe

    assert describe("cpu") == f"cpu, {torch.get_num_threads()} threads"
    assert describe(torch.device("meta")) == "meta"
