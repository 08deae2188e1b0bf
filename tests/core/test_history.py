"""History: per-interaction undo/redo over array differences and small state."""

import numpy as np
import pytest

from fmseg.interactive.history import History


class Target:
    def __init__(self, shape=(3, 8, 8)):
        self.mask = np.zeros(shape, bool)
        self.labels = np.zeros(shape, np.uint16)
        self.state = {"prompts": {}}

    def history_state(self):
        return {"prompts": dict(self.state["prompts"])}

    def restore_history_state(self, state):
        self.state = {"prompts": dict(state["prompts"])}


def test_undo_and_redo_walk_the_steps_back_and_forth():
    t, h = Target(), History()
    with h.record(t, "first", region=(0, 1)):
        t.mask[1, 2:4, 2:4] = True
        t.state["prompts"][(0, 1)] = "box"
    with h.record(t, "commit", labels=True):
        t.labels[t.mask] = 7
        t.mask[:] = False
        t.state["prompts"].clear()
    assert h.undo_name == "commit"
    assert h.undo(t) == "commit"
    assert t.mask.sum() == 4 and not t.labels.any() and t.state["prompts"] == {(0, 1): "box"}
    assert h.undo(t) == "first" and not t.mask.any() and t.state["prompts"] == {}
    assert h.undo(t) is None
    assert h.redo(t) == "first" and h.redo(t) == "commit"
    assert (t.labels == 7).sum() == 4 and not t.mask.any()
    assert h.redo(t) is None


def test_a_new_step_drops_the_redo_stack_and_no_ops_are_not_recorded():
    t, h = Target(), History()
    with h.record(t, "a"):
        t.mask[0, 0, 0] = True
    h.undo(t)
    assert h.redo_name == "a"
    with h.record(t, "b"):
        t.mask[2, 1, 1] = True
    assert h.redo_name is None
    with h.record(t, "nothing"):
        pass
    assert h.undo_name == "b"


def test_nested_records_make_one_step_and_errors_still_record():
    t, h = Target(), History()
    with pytest.raises(RuntimeError):
        with h.record(t, "outer"):
            t.mask[0, 1, 1] = True
            with h.record(t, "inner"):
                t.mask[0, 2, 2] = True
            raise RuntimeError("boom")
    assert h.undo(t) == "outer" and not t.mask.any() and h.undo(t) is None


def test_depth_bounds_the_steps_kept():
    t, h = Target(), History(depth=2)
    for i in range(4):
        with h.record(t, f"s{i}"):
            t.mask[0, 0, i] = True
    assert h.undo(t) == "s3" and h.undo(t) == "s2" and h.undo(t) is None
    assert t.mask[0, 0].tolist()[:4] == [True, True, False, False]
    with pytest.raises(ValueError, match="depth"):
        History(depth=0)


def test_region_steps_only_touch_their_slice():
    t, h = Target(), History()
    t.mask[:, 0, 0] = True
    with h.record(t, "slice", region=(2, 5)):  # axis 2, index 5
        t.mask[:, 3, 5] = True
    h.undo(t)
    assert t.mask.sum() == 3 and not t.mask[:, 3, 5].any()
    h.redo(t)
    assert t.mask[:, 3, 5].all()


def test_large_changes_are_kept_as_bits_and_restored_exactly():
    t, h = Target((4, 16, 16)), History()
    rng = np.random.default_rng(0)
    t.labels[:] = rng.integers(0, 3, t.labels.shape)
    start = t.labels.copy()
    with h.record(t, "big", labels=True):
        t.mask[:, :, :9] = True  # over half the voxels: packed bits
        t.labels[t.mask] = 5
    step = h._undo[-1]
    assert step.flips.data.dtype == np.uint8 and step.label_at.data.dtype == np.uint8
    after = t.labels.copy()
    h.undo(t)
    assert not t.mask.any() and np.array_equal(t.labels, start)
    h.redo(t)
    assert t.mask.sum() == 4 * 16 * 9 and np.array_equal(t.labels, after)
