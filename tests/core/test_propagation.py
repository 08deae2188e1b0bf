"""Propagation rules, with a threshold model standing in for the network."""

import numpy as np
import pytest
import torch

from fmseg import Box, Prompts, Session, drain
from fmseg.interactive.predictor import Prediction, SliceEmbedding
from fmseg.interactive.propagation import PropagationSettings, dice, keep_connected, propagate_iter


class ThresholdPredictor:
    """Stands in for SAM: a slice is its own embedding; inside the box, pixels brighter than
    50 are the object."""

    device = torch.device("cpu")

    def frame(self, shape, spacing=(1.0, 1.0)):
        return None

    def embed(self, image, window, spacing=(1.0, 1.0)):
        return SliceEmbedding(torch.from_numpy(np.ascontiguousarray(image))[None], None)

    def predict(self, emb, prompts, mask_input=None):
        img = emb.features[0].numpy()
        b = prompts.box.normalised()
        mask = np.zeros(img.shape, bool)
        ys, xs = slice(int(b.y0), int(b.y1) + 1), slice(int(b.x0), int(b.x1) + 1)
        mask[ys, xs] = img[ys, xs] > 50
        return Prediction(mask.astype(np.float32), None, 1.0)


@pytest.fixture
def session(sphere_volume):
    return Session(sphere_volume, ThresholdPredictor())


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


def test_propagation_needs_only_a_mask_stack_and_a_segmenter(sphere_volume):
    truth = sphere_volume > 50
    masks = np.zeros(truth.shape, bool)
    masks[6] = truth[6]

    def segment(i, box):
        return (
            ThresholdPredictor()
            .predict(
                SliceEmbedding(torch.from_numpy(sphere_volume[i])[None], None), Prompts(box=box)
            )
            .mask()
        )

    result = drain(propagate_iter(masks, 6, segment, anchors={3}))
    assert result.reasons["down"] == "reached corrected slice 3"
    assert result.first == 4 and dice(masks[4:], truth[4:]) > 0.95


def test_propagation_along_another_axis_writes_the_session_mask(session, sphere_volume):
    truth = sphere_volume > 50
    session.mask[:, 24] = truth[:, 24]
    drain(session.propagate_iter(1, 24))
    assert dice(session.mask, truth) > 0.9
