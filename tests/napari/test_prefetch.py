"""The Segment tool's background embedding: follows the viewed slice, disk cache, GUI free."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from test_dock import Ticks

from fmseg.registry import load_tiny
from napari_fmseg._prefetch import DISK_ENV
from napari_fmseg._widget import SegmentWidget

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


class SlowTiny:
    """Tiny random-weight sessions whose encoder takes ``delay`` seconds per call (like the
    real one on a CPU) and records the slices it was asked for, in order."""

    def __init__(self, delay: float = 0.15) -> None:
        self.delay, self.sessions = delay, []

    def __call__(self, volume, **kwargs):
        from fmseg.interactive.session import Session

        torch.manual_seed(0)  # the same tiny weights each time (a re-opened file meets them)
        session = Session.from_registry(volume, device="cpu", load=load_tiny, **kwargs)
        real = session.predictor.embed_batch

        def slow(x: torch.Tensor) -> torch.Tensor:
            time.sleep(self.delay)  # releases the GIL, as the ONNX / torch encoder does
            return real(x)

        session.predictor.embed_batch = slow
        self.sessions.append(session)
        return session


def _volume(n: int = 12) -> np.ndarray:
    vol = np.random.default_rng(0).normal(0, 10, (n, 40, 40)).astype(np.float32)
    vol[:, 10:30, 12:28] += 200
    return vol


def _widget(make_napari_viewer, factory, n: int = 12):
    viewer = make_napari_viewer()
    viewer.add_image(_volume(n))
    widget = SegmentWidget(viewer, session_factory=factory)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def test_embedding_follows_the_viewed_slice_without_blocking(make_napari_viewer, qtbot):
    factory = SlowTiny()
    viewer, widget = _widget(make_napari_viewer, factory, n=24)
    viewer.dims.set_current_step(0, 2)
    # Creating the session's layers (napari's layer controls and vispy visuals, on the GUI
    # thread by design) happens before the clock; the clock covers the background embedding.
    widget.start()
    qtbot.waitUntil(lambda: widget.prefetch.prefetcher is not None, timeout=WAIT_MS)
    session = widget.session
    with Ticks() as ticks:
        qtbot.waitUntil(lambda: session.is_embedded(0, 3), timeout=WAIT_MS)
        viewer.dims.set_current_step(0, 20)  # the user jumps: slices around 20 come next
        qtbot.waitUntil(lambda: session.is_embedded(0, 20), timeout=WAIT_MS)
        far = [i for i in range(8, 16) if session.is_embedded(0, i)]
        qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert far == [], far  # slices between the two foci waited their turn
    assert all(session.is_embedded(0, i) for i in range(24))
    assert widget.prefetch.last is not None and widget.prefetch.last.done == 24
    assert ticks.longest < 0.25, ticks.longest  # 100 ms timer period + a loaded machine


def test_cancel_keeps_the_slices_done(make_napari_viewer, qtbot):
    viewer, widget = _widget(make_napari_viewer, SlowTiny(delay=0.3), n=24)
    widget.start()
    qtbot.waitUntil(
        lambda: widget.session is not None and widget.embedding.running, timeout=WAIT_MS
    )
    qtbot.waitUntil(lambda: widget.session.is_embedded(0, 12), timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    done = [i for i in range(24) if widget.session.is_embedded(0, i)]
    assert 12 in done and len(done) < 24


def test_reopening_finds_the_embeddings_on_disk(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    monkeypatch.setenv(DISK_ENV, "1")
    monkeypatch.setenv("FMSEG_CACHE", str(tmp_path))
    factory = SlowTiny(delay=0.0)
    viewer, widget = _widget(make_napari_viewer, factory, n=6)
    widget.start()
    qtbot.waitUntil(lambda: widget.session is not None, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert len(list((tmp_path / "embeddings").glob("*/*.pt"))) == 6
    again = SegmentWidget(viewer, session_factory=factory)  # the same file opened again
    again.start()
    qtbot.waitUntil(lambda: again.session is not None, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not again.busy, timeout=WAIT_MS)
    assert again.prefetch.last is None  # nothing left to compute: no encoder step ran
    assert all(again.session.is_embedded(0, i) for i in range(6))
