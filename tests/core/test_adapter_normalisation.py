"""Adapter training feeds the encoder what apply and sessions feed it (one normalisation rule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmseg.adapters.data import Annotation, slice_samples
from fmseg.interactive.predictor import SamPredictor, normalise
from fmseg.registry import get_spec, load_model


def _annotation() -> Annotation:
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (4, 24, 20)).astype(np.float32)
    labels = np.zeros(image.shape, np.int32)
    labels[:, 6:15, 5:12] = 1
    return Annotation(image, labels, 1, axis=0, slices=[1, 2], spacing=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("name", ["litemedsam", "sam-vit-b"])
def test_training_inputs_equal_the_sessions_model_inputs(name):
    norm = get_spec(name).normalisation
    pred = SamPredictor(load_model(name, tiny=True, device="cpu"), norm)
    ann = _annotation()
    size = pred.model.img_size
    window = (60.0, 140.0)
    samples = slice_samples([ann], size, window=window, normalisation=norm)
    expected, _ = pred.preprocess(ann.image[1], window, (1.0, 1.0))
    torch.testing.assert_close(samples[0].image, expected[0])


def test_normalise_rules():
    x = torch.rand(1, 3, 8, 8)
    assert normalise(x, "minmax") is x
    y = normalise(x, "imagenet")
    assert y.shape == x.shape and not torch.allclose(x, y)
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(x, "zscore")
