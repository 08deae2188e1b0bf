"""Propagation rules, with a threshold model standing in for the network."""

import numpy as np
import pytest

from fmseg import Box, Prompts, Session, drain
from fmseg.predictor import Prediction
from fmseg.propagation import PropagationSettings, dice, keep_connected


class ThresholdPredictor:
    """Stands in for SAM: inside the box, pixels brighter than 50 are the object."""

    def __init__(self, session):
        self.session, self.calls = session, 0

    def predict(self, emb, prompts, mask_input=None):
        self.calls += 1
        axis, index = emb
        img = self.session.slice_image(axis, index)
        b = prompts.box.normalised()
        mask = np.zeros(img.shape, bool)
        ys, xs = slice(int(b.y0), int(b.y1) + 1), slice(int(b.x0), int(b.x1) + 1)
        mask[ys, xs] = img[ys, xs] > 50
        return Prediction(mask.astype(np.float32), None, 1.0)


@pytest.fixture
def session(sphere_volume, monkeypatch):
    s = Session(sphere_volume, tiny=True)
    s.predictor = ThresholdPredictor(s)
    monkeypatch.setattr(s, "embedding", lambda axis, index: (axis, index))
    return s


def test_propagates_until_object_ends(session, sphere_volume):
    truth = sphere_volume > 50
    session.mask[6] = truth[6]
    result = drain(session.propagate_iter(0, 6))
    assert (result.first, result.last) == (truth.any((1, 2)).argmax(), 10)
    assert "object ended" in result.reasons["up"] or "end" in result.reasons["up"]
    assert dice(session.mask, truth) > 0.95


def test_empty_seed_is_refused(session):
    with pytest.raises(ValueError, match="segment the object on slice 6 first"):
        drain(session.propagate_iter(0, 6))


def test_stops_at_corrected_slice_and_keeps_it(session, sphere_volume):
    session.mask[6] = sphere_volume[6] > 50
    session.prompts[(0, 8)] = Prompts(box=Box(0, 0, 5, 5))  # the clinician's anchor
    session.mask[8] = False
    result = drain(session.propagate_iter(0, 6))
    assert result.reasons["up"] == "reached corrected slice 8"
    assert not session.mask[8].any() and session.mask[7].any()


def test_leaks_outside_previous_mask_are_removed():
    prev = np.zeros((30, 30), bool)
    prev[5:15, 5:15] = True
    mask = prev.copy()
    mask[25:29, 25:29] = True  # a separate region far away: a leak
    kept = keep_connected(mask, prev, reach=3)
    assert kept[5:15, 5:15].all() and not kept[25:, 25:].any()


def test_shape_jump_stops_and_clears_stale_slices(session, sphere_volume):
    session.mask[6] = sphere_volume[6] > 50
    session.mask[9:] = True  # stale result of an earlier run
    session.volume = session.volume.copy()
    session.volume[8] = 100.0  # slice 8 floods the whole box: shape jump
    result = drain(session.propagate_iter(0, 6, PropagationSettings(min_overlap=0.8)))
    assert "shape changed" in result.reasons["up"]
    assert result.last == 7 and not session.mask[8:].any()
