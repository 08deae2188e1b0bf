import importlib.util

import pytest
import torch
from torch import nn

from fmseg.adapters.sliding import (
    importance_map,
    pad_to_multiple,
    sliding_window_iter,
    sliding_window_logits,
    window_starts,
)
from fmseg.progress import Progress

needs_monai = pytest.mark.skipif(importlib.util.find_spec("monai") is None, reason="needs monai")


def _pointwise(cin=1, cout=2):
    torch.manual_seed(0)
    return nn.Conv3d(cin, cout, kernel_size=1).eval()


def _conv3():
    torch.manual_seed(0)
    return nn.Conv3d(1, 2, kernel_size=3, padding=1).eval()


def _drain(gen):
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


def test_pad_to_multiple_pads_the_ends_and_crops_back():
    x = torch.randn(1, 2, 5, 8, 9)
    padded, crop = pad_to_multiple(x, 4)
    assert padded.shape == (1, 2, 8, 8, 12)
    assert torch.equal(padded[crop], x)
    assert padded[..., 9:].abs().sum() == 0
    same, crop = pad_to_multiple(x, (5, 8, 9))
    assert same is x and torch.equal(same[crop], x)
    rep, _ = pad_to_multiple(x, (1, 1, 10), mode="replicate")
    assert torch.equal(rep[..., 9], x[..., 8])


def test_window_starts_cover_the_side_and_end_flush():
    assert window_starts(20, 8, 0.25) == [0, 6, 12]
    assert window_starts(21, 8, 0.5) == [0, 4, 8, 12, 13]
    assert window_starts(8, 8, 0.25) == [0] and window_starts(5, 8, 0.25) == [0]


def test_gaussian_importance_map_peaks_in_the_middle():
    w = importance_map((8, 8, 8))
    assert w.shape == (8, 8, 8) and w.max() == 1.0 and w.min() > 0
    assert w[3, 3, 3] > w[0, 3, 3] > w[0, 0, 0]
    assert torch.equal(importance_map((4, 4, 4), "constant"), torch.ones(4, 4, 4))
    with pytest.raises(ValueError, match="blend mode"):
        importance_map((4, 4, 4), "median")


@pytest.mark.parametrize("shape", [(2, 1, 20, 23, 17), (1, 1, 5, 6, 7)])
def test_pointwise_model_equals_full_volume_and_generator_reports_progress(shape):
    model = _pointwise()
    volume = torch.randn(shape)
    with torch.no_grad():
        full = model(volume)
    plain = sliding_window_logits(model, volume, (8, 8, 8), batch=3, use_monai=False)
    torch.testing.assert_close(plain, full)

    gen = sliding_window_iter(model, volume, (8, 8, 8), batch=3)
    first = next(gen)
    assert torch.is_grad_enabled()  # no_grad does not leak to the caller between windows
    steps, logits = _drain(gen)
    steps.insert(0, first)
    torch.testing.assert_close(logits, full)
    assert all(isinstance(s, Progress) for s in steps)
    assert [s.done for s in steps] == sorted(s.done for s in steps)
    assert steps[-1].done == steps[-1].total and "window" in steps[-1].message


@needs_monai
def test_monai_inferer_agrees_with_full_volume_and_with_the_plain_twin():
    volume = torch.randn(2, 1, 20, 23, 17)
    model = _pointwise()
    with torch.no_grad():
        full = model(volume)
    monai = sliding_window_logits(model, volume, (8, 8, 8), use_monai=True)
    assert type(monai) is torch.Tensor
    torch.testing.assert_close(monai, full)
    # A 3x3x3 model sees window borders: equal only with the same windows and blending.
    conv = _conv3()
    for vol in (volume, volume[:, :, :5, :6, :7]):
        a = sliding_window_logits(conv, vol, (8, 8, 8), 0.5, 2, "constant", use_monai=True)
        b = sliding_window_logits(conv, vol, (8, 8, 8), 0.5, 2, "constant", use_monai=False)
        torch.testing.assert_close(a, b)


def test_gaussian_blending_down_weights_window_borders():
    # Window borders see zero padding instead of neighbours; the Gaussian gives them little
    # weight where windows overlap, so it tracks the full-volume result more closely.
    conv = _conv3()
    volume = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        full = conv(volume)
    err = {
        mode: (sliding_window_logits(conv, volume, (8, 8, 8), 0.5, 8, mode, use_monai=False) - full)
        .abs()
        .mean()
        for mode in ("gaussian", "constant")
    }
    assert err["gaussian"] < err["constant"]


def test_bad_patch_or_overlap_is_refused():
    model = _pointwise()
    with pytest.raises(ValueError, match="2-D patch"):
        sliding_window_logits(model, torch.zeros(1, 1, 8, 8, 8), (8, 8), use_monai=False)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_logits(model, torch.zeros(1, 1, 8, 8, 8), (8, 8, 8), 1.0)
