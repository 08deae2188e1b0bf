"""Background embedding of the selected volume for the FMSeg module (Logic side, no Qt).

When the user selects a volume, the Widget runs :func:`prefetch_iter` in a
:class:`~FMSegLib.worker.BackgroundTask` (progress bar, Cancel) and calls :func:`focus` when
the slice views move, so that the slice in view is encoded next and a box or click there only
runs the decoder. Embeddings are kept on disk by content hash
(:func:`fmseg.interactive.prefetch.attach_disk_cache`, ``$FMSEG_CACHE/embeddings``): selecting
the same volume again, or re-loading the same file, re-uses them.
"""

from __future__ import annotations

from typing import Any

from fmseg.interactive.prefetch import Prefetcher, attach_disk_cache
from fmseg.progress import Progress, Work


def prefetch_iter(
    logic: Any, volume: Any, axis: int, index: int | None = None, disk: bool = True
) -> Work[int]:
    """Make (or reuse) the volume's session and embed its slices along ``axis``.

    Args:
        logic: The module's ``FMSegLogic`` (its ``session_iter`` makes the session).
        volume: A ``VolumeInput`` read on the main thread.
        axis: Array axis of the slice view the user works in (``logic.view_axis``).
        index: Slice in view along ``axis`` (None: the middle one).
        disk: Keep embeddings on disk by content hash.

    Yields:
        :class:`~fmseg.progress.Progress` per encoded slice.

    Returns:
        Slices encoded by this run (0 when all were cached).
    """
    session = yield from logic.session_iter(volume)
    if disk and session.cache.disk_dir is None:
        attach_disk_cache(session)
    pre = Prefetcher(session, axis, index)
    prefetchers(logic)[volume.node_id] = pre
    yield Progress(0, pre.total, f"encoding {pre.remaining()} of {pre.total} slices")
    return (yield from pre.run_iter())


def prefetchers(logic: Any) -> dict[str, Prefetcher]:
    """The logic's running prefetchers by volume node ID."""
    if not hasattr(logic, "_prefetchers"):
        logic._prefetchers = {}
    return logic._prefetchers


def focus(logic: Any, volume_node_id: str, axis: int, index: int) -> bool:
    """The user looks at slice ``index`` along ``axis``: encode around it next.

    Returns False when no prefetch runs for that volume (cheap: a lock for microseconds).
    """
    pre = prefetchers(logic).get(volume_node_id)
    if pre is None:
        return False
    pre.focus(axis, index)
    return True
