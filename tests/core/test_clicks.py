"""Tests for the click simulator and model-free refinement (``fmseg.training.clicks``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmseg.interactive.predictor import SamPredictor
from fmseg.interactive.prompts import Box, Point, Prompts
from fmseg.registry import load_model
from fmseg.training import clicks as ck


def rect(shape=(40, 60), rows=(10, 30), cols=(5, 45)) -> np.ndarray:
    """A boolean rectangle mask."""
    m = np.zeros(shape, dtype=bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def test_first_click_is_positive_and_central():
    gt = rect()
    p = ck.first_click(gt)
    assert p.positive
    assert 19 <= p.y <= 20 and 15 <= p.x <= 35
    assert gt[int(p.y), int(p.x)]


def test_first_click_on_border_object_stays_inside():
    gt = np.zeros((20, 20), dtype=bool)
    gt[:, :6] = True
    p = ck.first_click(gt)
    assert gt[int(p.y), int(p.x)] and p.x in (2.0, 3.0)


def test_first_click_rejects_empty():
    with pytest.raises(ValueError):
        ck.first_click(np.zeros((5, 5), dtype=bool))


def test_error_click_false_negative_is_positive():
    gt = rect()
    pred = gt.copy()
    pred[10:30, 30:45] = False
    p = ck.error_click(gt, pred)
    assert p.positive and 30 <= p.x < 45 and gt[int(p.y), int(p.x)] and not pred[int(p.y), int(p.x)]


def test_error_click_false_positive_is_negative():
    gt = rect()
    pred = gt.copy()
    pred[0:8, 50:60] = True
    p = ck.error_click(gt, pred)
    assert not p.positive and pred[int(p.y), int(p.x)] and not gt[int(p.y), int(p.x)]


def test_error_click_picks_largest_region_and_none_when_perfect():
    gt = rect()
    pred = gt.copy()
    pred[10:12, 5:7] = False  # small false negative
    pred[32:40, 0:20] = True  # larger false positive
    assert not ck.error_click(gt, pred).positive
    assert ck.error_click(gt, gt) is None


def test_error_clicks_orders_by_region_size():
    gt = rect()
    pred = gt.copy()
    pred[10:12, 5:7] = False
    pred[32:40, 0:20] = True
    clicks = ck.error_clicks(gt, pred, 5)
    assert len(clicks) == 2 and not clicks[0].positive and clicks[1].positive


def test_random_interior_click_is_inside():
    gt = rect()
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = ck.random_interior_click(gt, rng)
        assert gt[int(p.y), int(p.x)] and p.positive


def test_dice():
    a = rect()
    assert ck.dice(a, a) == 1.0
    assert ck.dice(a, ~a) == 0.0
    assert ck.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_refine_positive_click_adds_confident_region():
    gt = rect()
    prob = np.where(gt, 0.9, 0.01)
    prob[10:30, 30:45] = 0.3  # under-confident part of the object
    mask = prob > 0.5
    click = ck.error_click(gt, mask)
    out = ck.refine_with_click(prob, mask, click)
    assert ck.dice(out, gt) > ck.dice(mask, gt)
    assert out[mask].all()


def test_refine_negative_click_removes_spurious_component():
    gt = rect()
    mask = gt.copy()
    mask[34:39, 50:58] = True
    prob = mask * 0.9
    out = ck.refine_with_click(prob, mask, ck.error_click(gt, mask))
    assert np.array_equal(out, gt)


def test_refine_negative_click_on_main_component_is_local():
    gt = rect()
    mask = gt.copy()
    mask[30:36, 20:30] = True  # leak attached to the object
    out = ck.refine_with_click(mask * 0.9, mask, ck.error_click(gt, mask))
    assert ck.dice(out, gt) > ck.dice(mask, gt) and out.sum() > 0.8 * gt.sum()


def test_refine_ignores_agreeing_clicks():
    mask = rect()
    prob = mask * 0.9
    assert np.array_equal(ck.refine_with_click(prob, mask, Point(20, 20, True)), mask)
    assert np.array_equal(ck.refine_with_click(prob, mask, Point(2, 2, False)), mask)


def test_simulated_session_with_tiny_model():
    torch.manual_seed(0)
    pred = SamPredictor(load_model("litemedsam", tiny=True, device="cpu"))
    image = np.random.default_rng(0).normal(size=(40, 60)).astype(np.float32)
    gt = rect()
    emb = pred.embed(image, (-2.0, 2.0))
    prompts = Prompts(box=Box.from_mask(gt))
    out = pred.predict(emb, prompts)
    for _ in range(3):
        click = ck.error_click(gt, out.mask())
        if click is None:
            break
        prompts = prompts.with_point(click)
        out = pred.predict(emb, prompts, out.low_res_logits)
        assert out.prob.shape == gt.shape
    assert len(prompts.points) >= 1


def test_save_overlay_holds_only_decoder_parts(tmp_path):
    from fmseg.training.train_points import PARTS, save_overlay

    model = load_model("litemedsam", tiny=True, device="cpu")
    path = tmp_path / "over.pt"
    save_overlay(model, path, {"steps": 0})
    state = torch.load(path, weights_only=True)["model"]
    assert state and all(k.startswith(PARTS) for k in state)
    assert all(v.dtype == torch.float16 for v in state.values())


def test_points_tensor_pads_with_not_a_point():
    from fmseg.training.train_points import points_tensor

    xy, lab = points_tensor([[Point(1, 2, True)], [Point(3, 4, False), Point(5, 6, True)], []])
    assert xy.shape == (3, 2, 2) and lab.tolist() == [[1, -1], [0, 1], [-1, -1]]
    assert xy[1, 1].tolist() == [5.0, 6.0]


def test_jittered_box_stays_in_model_frame():
    from fmseg.training.train_points import Target, jittered_box

    t = Target(0, rect(), np.array([5.0, 10.0, 44.0, 29.0]), (2.0, 2.0), (40, 60), "aal")
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = jittered_box(t, rng)
        assert b[0] < b[2] and b[1] < b[3] and b.min() >= 0 and b[2] <= 118 and b[3] <= 78


def test_click_count_per_mode_and_single_click_emphasis():
    from fmseg.training.train_points import click_count

    rng = np.random.default_rng(0)
    assert click_count("box", rng) == 0
    plain = [click_count("clicks", rng) for _ in range(600)]
    assert set(plain) == {1, 2, 3}
    boxed = {click_count("box+clicks", rng) for _ in range(300)}
    assert boxed == {1, 2, 3, 4, 5}
    assert {click_count("clicks", rng, one_click=1.0) for _ in range(50)} == {1}
    half = np.mean([click_count("clicks", rng, one_click=0.6) == 1 for _ in range(2000)])
    assert 0.68 < half < 0.78  # 0.6 + 0.4 / 3
