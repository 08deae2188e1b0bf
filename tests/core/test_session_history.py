"""Session: per-interaction undo/redo, start from a mask, scribbles and lassos."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from fmseg import Box, PromptError, Prompts, Session, drain
from fmseg.interactive.predictor import Prediction, SliceEmbedding
from fmseg.interactive.scribbles import SCRIBBLE_POINTS


class ThresholdPredictor:
    """Stands in for SAM: pixels brighter than 50 inside the box, or connected to a click."""

    device = torch.device("cpu")

    def frame(self, shape, spacing=(1.0, 1.0)):
        return SimpleNamespace(shape=tuple(shape))

    def embed(self, image, window, spacing=(1.0, 1.0)):
        return SliceEmbedding(
            torch.from_numpy(np.ascontiguousarray(image))[None], self.frame(image.shape)
        )

    def predict(self, emb, prompts, mask_input=None):
        img = emb.features[0].numpy()
        bright = img > 50
        mask = np.zeros(img.shape, bool)
        if prompts.box is not None:
            b = prompts.box.normalised()
            ys, xs = slice(int(b.y0), int(b.y1) + 1), slice(int(b.x0), int(b.x1) + 1)
            mask[ys, xs] = bright[ys, xs]
        lab, _ = ndimage.label(bright)
        for p in prompts.points:
            if p.positive and lab[int(p.y), int(p.x)]:
                mask |= lab == lab[int(p.y), int(p.x)]
        return Prediction(mask.astype(np.float32), None, 1.0)


@pytest.fixture
def session(sphere_volume):
    return Session(sphere_volume, ThresholdPredictor())


def test_every_interaction_is_undone_and_redone(session):
    session.set_box(0, 6, Box(10, 10, 38, 38))
    after_box = session.mask.copy()
    session.add_point(0, 6, 24, 24, positive=False)  # removes the middle
    after_click = session.mask.copy()
    assert after_click.sum() < after_box.sum()
    assert session.history.undo_name == "click"
    assert session.undo() and np.array_equal(session.mask, after_box)
    assert session.prompts[(0, 6)].points == ()
    assert session.undo() and not session.mask.any() and (0, 6) not in session.prompts
    assert not session.undo()
    assert session.redo() and session.redo() and np.array_equal(session.mask, after_click)
    assert len(session.prompts[(0, 6)].points) == 1 and not session.can_redo


def test_undoing_a_commit_restores_the_object_it_committed(session):
    session.set_box(0, 6, Box(10, 10, 38, 38))
    drain(session.propagate_iter(0, 6))
    propagated = session.mask.copy()
    assert propagated[2:10].any(axis=(1, 2)).sum() >= 6
    n = session.commit(3)
    assert n == propagated.sum() and not session.mask.any() and not session.prompts
    assert session.history.undo_name == "commit label 3"
    assert session.undo()
    assert not session.labels.any() and np.array_equal(session.mask, propagated)
    assert session.prompts[(0, 6)].box == Box(10, 10, 38, 38)  # no need to propagate again
    assert session.redo() and (session.labels == 3).sum() == n and not session.mask.any()


def test_a_propagation_is_one_step_even_when_cancelled(session):
    session.set_box(0, 6, Box(10, 10, 38, 38))
    seeded = session.mask.copy()
    work = session.propagate_iter(0, 6)
    next(work)
    work.close()  # the user pressed Cancel
    assert session.mask.sum() > seeded.sum()
    assert session.history.undo_name == "propagate"
    session.undo()
    assert np.array_equal(session.mask, seeded)


def test_start_from_label_lifts_it_and_clicks_edit_it(session):
    session.labels[5:8, 14:34, 14:34] = 2
    session.labels[0, :4, :4] = 1
    assert session.start_from_label(2) == 3 * 20 * 20
    assert not (session.labels == 2).any() and session.mask.sum() == 1200
    session.add_point(0, 6, 36, 24)  # outside the square: grows it, no model run
    grown = session.mask[6].sum()
    assert grown > 400 and session.mask[6, 24, 36] and session.mask[6, 20, 20]
    session.add_point(0, 6, 20, 20, positive=False)
    assert not session.mask[6, 20, 20] and session.mask[6, 30, 30]
    session.clear_prompts(0, 6)  # back to the start mask on that slice
    assert session.mask[6].sum() == 400
    for _ in range(4):
        session.undo()
    assert (session.labels == 2).sum() == 1200 and not session.mask.any()
    with pytest.raises(ValueError, match="label 9 is not"):
        session.start_from_label(9)


def test_a_slice_mask_becomes_the_base_of_that_slice(session):
    mask = np.zeros((12, 48), bool)  # the (z, x) slice at y = 24
    mask[3:9, 14:34] = True
    session.set_working_mask(mask, axis=1, index=24)
    assert session.mask[:, 24].sum() == 120 and session.mask.sum() == 120
    session.set_box(1, 24, Box(2, 0, 45, 11))  # a box replaces the base: the ball's section
    assert not np.array_equal(session.mask[:, 24], mask) and session.mask[6, 24, 24]
    session.set_box(1, 24, None)
    assert np.array_equal(session.mask[:, 24], mask)
    with pytest.raises(ValueError, match="shape"):
        session.set_working_mask(np.zeros((3, 3), bool))


def test_a_lasso_is_the_polygon_and_a_scribble_adds_clicks(session):
    square = np.array([[14.0, 14.0], [34.0, 14.0], [34.0, 34.0], [14.0, 34.0]])
    mask = session.set_lasso(0, 6, square)
    assert mask[24, 24] and not mask[5, 5] and 350 <= mask.sum() <= 460
    session.add_scribble(0, 6, np.array([[16.0, 16.0], [16.0, 32.0]]), positive=False)
    assert len(session.prompts[(0, 6)].points) == SCRIBBLE_POINTS
    assert not session.mask[6, 24, 16] and session.mask[6, 24, 30]
    session.undo()
    assert session.mask[6, 24, 16] and session.prompts[(0, 6)].points == ()
    session.clear_prompts()
    assert not session.mask.any() and session.undo() and session.mask[6].any()


def test_scribble_on_an_empty_slice_segments_from_its_clicks(session):
    session.add_scribble(0, 6, np.array([[20.0, 24.0], [28.0, 24.0]]))
    assert session.mask[6, 24, 24] and not session.mask[6, 2, 2]
    assert all(p.positive for p in session.prompts[(0, 6)].points)
    assert session.set_prompts(0, 6, Prompts()).sum() == 0


def test_a_refused_prompt_leaves_no_step(session):
    session.set_box(0, 6, Box(10, 10, 38, 38))
    with pytest.raises(PromptError, match="outside"):
        session.add_point(0, 6, 80, 5)
    assert session.prompts[(0, 6)].points == () and session.history.undo_name == "box"
