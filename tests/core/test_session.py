import numpy as np
import pytest

from fmseg import Box, Cancelled, Point, PromptError, Prompts, Session, drain
from fmseg.interactive.session import registry_predictor
from fmseg.registry import load_tiny


@pytest.fixture
def session(sphere_volume):
    return Session.from_registry(sphere_volume, spacing=(2.0, 1.0, 1.0), load=load_tiny)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 3, 4, 5)), "4D"),
        (np.zeros((64, 64, 3)), "RGB"),
        (np.ones((4, 8, 8)), "constant"),
        (np.full((4, 8, 8), np.nan), "NaN"),
        (np.array(["a", "b"]), "1D"),
    ],
)
def test_bad_images_are_named(array, message):
    with pytest.raises(ValueError, match=message):
        Session(array, registry_predictor("litemedsam", load=load_tiny))


def test_nan_count_reported():
    vol = np.random.default_rng(0).random((3, 16, 16))
    vol[0, 0, :3] = np.inf
    with pytest.raises(ValueError, match="3 NaN/inf"):
        Session(vol, registry_predictor("litemedsam", load=load_tiny))


def test_2d_image_is_one_slice_volume():
    s = Session.from_registry(np.random.default_rng(1).random((32, 40)), load=load_tiny)
    assert s.volume.shape == (1, 32, 40)
    assert s.set_box(0, 0, Box(4, 4, 20, 20)).shape == (32, 40)


def test_embeddings_cached_and_batched(session):
    assert not session.is_embedded(0, 3)
    progress = []
    computed = drain(session.embed_volume_iter(0, batch=4), progress.append)
    assert computed == 12 and progress[-1].fraction == 1.0
    assert all(session.is_embedded(0, i) for i in range(12))
    assert drain(session.embed_volume_iter(0)) == 0  # nothing left to do


def test_prompt_updates_only_its_slice(session):
    mask = session.set_box(0, 6, Box(10, 10, 38, 38))
    assert mask.shape == (48, 48)
    assert not session.mask[:6].any() and not session.mask[7:].any()
    session.add_point(0, 6, 24, 24, positive=False)
    assert session.prompts[(0, 6)].points == (Point(24, 24, False),)
    session.clear_prompts(0, 6)
    assert not session.mask.any() and (0, 6) not in session.prompts


def test_prompt_outside_slice_is_rejected_without_state_change(session):
    with pytest.raises(PromptError, match="outside"):
        session.add_point(0, 6, 80, 5)
    with pytest.raises(IndexError, match="outside 0..11"):
        session.set_box(0, 12, Box(1, 1, 5, 5))


def test_commit_protects_existing_labels_and_undo_restores(session):
    session.mask[5, 10:20, 10:20] = True
    assert session.commit(1) == 100
    session.mask[5, 15:25, 15:25] = True
    assert session.commit(2) == 100 - 25  # overlap with label 1 kept
    assert (session.labels == 1).sum() == 100
    session.mask[5, 15:25, 15:25] = True
    session.commit(3, overwrite=True)
    assert (session.labels == 3).sum() == 100
    assert session.undo() and session.undo()
    assert (session.labels == 1).sum() == 100 and (session.labels == 2).sum() == 0
    assert session.undo() and not session.labels.any()
    assert not session.undo() and not session.can_undo


def test_label_value_checked(session):
    session.mask[0, 0, 0] = True
    with pytest.raises(ValueError, match="between 1 and 65535"):
        session.commit(0)
    assert session.mask.any()  # nothing lost on a refused commit


def test_empty_prompts_clear_the_slice(session):
    session.set_box(0, 2, Box(5, 5, 30, 30))
    assert session.set_prompts(0, 2, Prompts()).sum() == 0


def test_cancelled_drain_stops_embedding(session):
    with pytest.raises(Cancelled):
        drain(session.embed_volume_iter(0, batch=1), should_stop=lambda: True)
    assert sum(session.is_embedded(0, i) for i in range(12)) == 1


def test_a_session_takes_its_predictors(sphere_volume):
    box = registry_predictor("litemedsam", load=load_tiny)
    s = Session(sphere_volume, box, spacing=(2.0, 1.0, 1.0))
    assert s.predictor is box and s.point_predictor is None
    assert s.add_point(0, 6, 24, 24).shape == (48, 48)  # clicks fall back to the box model
    other = Session(sphere_volume, registry_predictor("litemedsam", load=load_tiny), cache=s.cache)
    assert s.is_embedded(0, 6) and not other.is_embedded(0, 6)  # other weights, other keys


def test_from_registry_loads_the_click_model(sphere_volume):
    s = Session.from_registry(sphere_volume, load=load_tiny)
    assert s.model_name == "litemedsam" and s.point_predictor is not None
    assert (
        Session.from_registry(sphere_volume, point_model=None, load=load_tiny).point_predictor
        is None
    )
