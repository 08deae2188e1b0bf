import numpy as np
import pytest
import torch

from fmseg import Box, Point, PromptError, Prompts
from fmseg.transforms import SliceFrame, intensity_window, prepare_slice


@pytest.mark.parametrize(
    ("shape", "spacing", "resized"),
    [
        ((128, 128), (1, 1), (256, 256)),
        ((100, 200), (1, 1), (128, 256)),
        ((60, 200), (2.5, 1.0), (192, 256)),
        ((300, 50), (1, 1), (256, 43)),
    ],
)
def test_frame_keeps_physical_aspect(shape, spacing, resized):
    assert SliceFrame.for_slice(shape, spacing, 256).resized == resized


def test_prompt_mapping_round_trips_through_model_frame():
    frame = SliceFrame.for_slice((60, 200), (2.5, 1.0), 256)
    box = Box(10, 5, 150, 40)
    b = frame.box_to_model(box)
    sx, sy = frame.scale_xy
    np.testing.assert_allclose(b / [sx, sy, sx, sy], [10, 5, 150, 40], rtol=1e-6)
    xy, lab = frame.points_to_model(Prompts((Point(20, 30), Point(5, 7, False))))
    np.testing.assert_allclose(xy[:, 0] / sx, [20, 5], rtol=1e-6)
    assert lab.tolist() == [1, 0]


def test_mask_maps_back_exactly():
    frame = SliceFrame.for_slice((60, 200), (2.5, 1.0), 256)
    mask = np.zeros((60, 200), bool)
    mask[10:40, 30:150] = True
    logits = frame.mask_to_model(mask, 256)
    back = frame.logits_to_slice(logits)[0, 0].numpy() > 0
    assert back.shape == (60, 200)
    assert (back == mask).mean() > 0.99


def test_prepare_slice_range_and_padding():
    img = np.linspace(-1000, 1000, 100 * 50, dtype=np.float32).reshape(100, 50)
    frame = SliceFrame.for_slice(img.shape, (1, 1), 256)
    x = prepare_slice(img, (-160, 240), frame)
    assert x.shape == (1, 3, 256, 256)
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)
    assert torch.all(x[..., :, frame.resized[1] :] == 0)


def test_window_percentiles_and_degenerate():
    vol = np.arange(1000, dtype=np.float32)
    lo, hi = intensity_window(vol, None)
    assert 0 < lo < 10 and 990 < hi < 999
    assert intensity_window(vol, (5, 5)) == (5.0, 6.0)


def test_prompts_outside_image_are_rejected():
    with pytest.raises(PromptError, match="outside the 50x40 image"):
        Prompts((Point(60, 10),)).validate((40, 50))
    with pytest.raises(PromptError, match="does not overlap"):
        Prompts(box=Box(100, 100, 120, 120)).validate((40, 50))
    with pytest.raises(PromptError, match="smaller than one pixel"):
        Prompts(box=Box(3, 3, 3.5, 9)).validate((40, 50))
    Prompts((Point(0, 0), Point(49, 39)), Box(40, 30, 0, 0)).validate((40, 50))


def test_box_from_mask_with_margin_clips():
    m = np.zeros((20, 30), bool)
    m[2:5, 25:29] = True
    assert Box.from_mask(m, 3) == Box(22, 0, 29, 7)
    with pytest.raises(PromptError, match="empty mask"):
        Box.from_mask(np.zeros((4, 4), bool))
