"""Background embedding: nearest-first order, re-focus, disk cache by content hash."""

import threading

import numpy as np
import pytest
import torch

from fmseg import Box, Session, drain
from fmseg.interactive.prefetch import (
    Prefetcher,
    attach_disk_cache,
    disk_cache,
    embeddings_dir,
    nearest_first,
)
from fmseg.registry import load_tiny


def _session(volume, cache=None, window=None):
    return Session.from_registry(volume, load=load_tiny, cache=cache, window=window)


@pytest.fixture
def small():
    """(6, 7, 5) volume: few slices per axis keep the tiny encoder's work short."""
    return np.random.default_rng(0).normal(size=(6, 7, 5)).astype(np.float32)


def test_nearest_first_orders_by_distance():
    assert nearest_first(6, 2) == [2, 3, 1, 4, 0, 5]
    assert nearest_first(3, 99) == [2, 1, 0]  # a focus outside is clipped
    assert sorted(nearest_first(7, 0)) == list(range(7))
    assert nearest_first(0, 0) == []


def test_embeds_nearest_the_focus_first_and_follows_moves(small):
    s = _session(small)
    pre = Prefetcher(s, axis=0, index=1)
    work = pre.run_iter()
    next(work)
    next(work)
    assert [i for i in range(6) if s.is_embedded(0, i)] == [1, 2]
    pre.focus(0, 5)  # the user scrolled: the next slices come from around 5
    next(work)
    next(work)
    assert s.is_embedded(0, 5) and s.is_embedded(0, 4)
    assert not s.is_embedded(0, 3)
    assert drain(work) == 6 and pre.remaining() == 0


def test_other_axes_follow_the_focused_one(small):
    s = _session(small)
    pre = Prefetcher(s, axis=1, index=3, axes=(0, 1))
    assert pre.axes == (1, 0) and pre.total == 7 + 6
    assert pre.next_batch() == [(1, 3)]
    drain(pre.run_iter())
    assert all(s.is_embedded(0, i) for i in range(6)) and not s.is_embedded(2, 0)


def test_disk_cache_survives_reopening_and_keys_on_content(small, tmp_path):
    first = _session(small, disk_cache(tmp_path))
    assert drain(Prefetcher(first, 0).run_iter()) == 6
    assert len(list(tmp_path.glob("*.pt"))) == 6
    again = _session(small.copy(), disk_cache(tmp_path))  # same data, new session
    pre = Prefetcher(again, 0)
    assert pre.remaining() == 0 and drain(pre.run_iter()) == 0
    changed = small.copy()
    changed[0, 0, 0] += 1.0  # one voxel differs: a new content hash, nothing reused
    assert Prefetcher(_session(changed, disk_cache(tmp_path)), 0).remaining() == 6
    other_window = _session(small, disk_cache(tmp_path), window=(0.0, 50.0))
    assert Prefetcher(other_window, 0).remaining() == 6


def test_default_disk_folder_is_under_the_fmseg_cache(tmp_path):
    assert embeddings_dir() == tmp_path / "cache" / "embeddings"  # conftest's FMSEG_CACHE
    assert disk_cache().disk_dir == embeddings_dir()


def test_attached_cache_is_per_encoder_weights(small, tmp_path):
    torch.manual_seed(0)
    a = _session(small)
    torch.manual_seed(0)
    b = _session(small)  # the same tiny weights, as two loads of one weights file
    attach_disk_cache(a, tmp_path)
    drain(Prefetcher(a, 0).run_iter())
    attach_disk_cache(b, tmp_path)
    assert Prefetcher(b, 0).remaining() == 0  # same weights: the same folder
    with torch.no_grad():
        next(b.predictor.model.image_encoder.parameters()).add_(1.0)
    attach_disk_cache(b, tmp_path)  # other weights under the same registry name
    assert b.cache.disk_dir != a.cache.disk_dir and Prefetcher(b, 0).remaining() == 6


def test_prompt_on_an_embedded_slice_never_calls_the_encoder(small):
    s = _session(small)
    drain(Prefetcher(s, 0, 2).run_iter())
    calls = []
    s.predictor.embed = lambda *a, **k: calls.append(1)  # would be the encoder
    s.predictor.embed_batch = lambda *a, **k: calls.append(1)
    mask = s.set_box(0, 2, Box(1, 1, 3, 3))
    assert mask.shape == (7, 5) and calls == []


def test_prompts_decode_while_the_worker_embeds(small):
    s = _session(small)
    pre = Prefetcher(s, 0, 0, axes=(0, 1, 2))
    drain(Prefetcher(s, 0, 3).run_iter())  # axis 0 ready; axes 1 and 2 still to embed
    errors = []

    def worker():
        try:
            drain(pre.run_iter())
        except Exception as err:  # pragma: no cover - reported by the assert below
            errors.append(err)

    t = threading.Thread(target=worker)
    t.start()
    for i in range(6):
        s.set_box(0, i, Box(1, 1, 3, 3))
        pre.focus(0, i)
    t.join()
    assert errors == [] and pre.remaining() == 0


def test_bad_axis_is_refused(small):
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        Prefetcher(_session(small), 0, axes=(0, 3))


def test_batches_stay_on_one_axis():
    s = _session(np.random.default_rng(0).random((3, 4, 5)).astype(np.float32))
    pre = Prefetcher(s, 0, 1, axes=(0, 1), batch=4)
    assert pre.next_batch() == [(0, 1), (0, 2), (0, 0)]
    drain(pre.run_iter())
    assert pre.remaining() == 0
