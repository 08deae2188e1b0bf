"""Clicks-only prompts: the decoder's result, then every click enforced model-free."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from fmseg.interactive.predictor import Prediction
from fmseg.interactive.prompts import Point, Prompts
from fmseg.interactive.refine import decode_prompts

EMB = SimpleNamespace(frame=SimpleNamespace(shape=(40, 40)))  # only its slice shape is read


class _Decoder:
    """Stand-in click decoder: a fixed probability map, whatever the clicks; counts calls."""

    def __init__(self, prob: np.ndarray) -> None:
        self.prob, self.calls = prob, []

    def predict(self, emb, prompts, mask_input=None) -> Prediction:
        self.calls.append((len(prompts.points), mask_input is not None))
        return Prediction(self.prob, torch.zeros(1, 1, 16, 16), 0.5)


def test_clicks_the_decoder_ignored_still_edit_the_mask():
    prob = np.zeros((40, 40), np.float32)
    prob[5:20, 5:20] = 0.9  # the decoder sees one square and nothing at the second click
    dec = _Decoder(prob)
    clicks = (Point(10, 10, True), Point(30, 30, True), Point(12, 12, False))
    pred, mask = decode_prompts(dec, dec, EMB, Prompts(clicks))
    assert pred is not None and dec.calls == [(1, False), (2, True), (3, True)]
    assert mask[30, 30], "a positive click outside the decoder's mask adds its region"
    assert not mask[12, 12], "a negative click inside the mask removes a region around it"
    assert mask[18, 18], "the rest of the decoder's object stays"


def test_clicks_the_decoder_obeyed_change_nothing():
    prob = np.zeros((40, 40), np.float32)
    prob[5:20, 5:20] = 0.9
    dec = _Decoder(prob)
    _, mask = decode_prompts(dec, dec, EMB, Prompts((Point(10, 10, True), Point(30, 5, False))))
    np.testing.assert_array_equal(mask, prob > 0.5)
