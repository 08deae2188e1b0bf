"""Background embedding of a volume, nearest the current slice first, kept on disk.

When a volume opens, a front end starts :meth:`Prefetcher.run_iter` in its worker and calls
:meth:`Prefetcher.focus` from the GUI thread whenever the user moves to another slice or axis.
The worker embeds one small batch at a time, always the slices closest to where the user is
now, so that a box or click on the current slice finds its embedding ready and decodes in
tens of milliseconds, and propagation only decodes.

Embeddings go through the session's :class:`~fmseg.interactive.cache.EmbeddingCache`, whose
keys are content hash of the volume + model + axis + slice + window: with a disk folder
(:func:`attach_disk_cache`, default ``$FMSEG_CACHE/embeddings``, one sub-folder per image
encoder's weights hash) re-opening the same file finds its slices already embedded, and a
changed image, weights or window never reuses a stale entry.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..progress import Progress, Work
from ..weights import cache_dir
from .accel import weights_key
from .cache import EmbeddingCache

if TYPE_CHECKING:
    from .session import Session

#: Default in-memory budget of a prefetching cache (fp32 LiteMedSAM slices are 4 MiB each).
MEMORY_BYTES = 1 << 30


def embeddings_dir() -> Path:
    """Default disk folder of slice embeddings: ``$FMSEG_CACHE/embeddings``."""
    return cache_dir() / "embeddings"


def disk_cache(
    folder: str | os.PathLike | None = None, max_bytes: int = MEMORY_BYTES
) -> EmbeddingCache:
    """An embedding cache that also keeps every slice on disk (fp16) by content hash.

    Args:
        folder: Disk folder; None: :func:`embeddings_dir`.
        max_bytes: In-memory budget (least recently used entries are evicted, stay on disk).
    """
    return EmbeddingCache(max_bytes, folder if folder is not None else embeddings_dir())


def attach_disk_cache(
    session: Session, folder: str | os.PathLike | None = None, max_bytes: int = MEMORY_BYTES
) -> EmbeddingCache:
    """Give ``session`` a disk-backed cache (call before it embeds anything); returns it.

    Entries go to ``folder/<hash of the image encoder's weights>``: the session's cache keys
    name the model by its registry name, which tiny test weights or a merged adapter share.
    """
    encoder = getattr(session.predictor.model, "image_encoder", session.predictor.model)
    root = Path(folder) if folder is not None else embeddings_dir()
    session.cache = disk_cache(root / weights_key(encoder), max_bytes)
    return session.cache


def nearest_first(n: int, center: int) -> list[int]:
    """Slice indices ``0..n-1`` ordered by distance from ``center`` (ties: above first).

    >>> nearest_first(5, 1)
    [1, 2, 0, 3, 4]
    """
    center = min(max(int(center), 0), n - 1) if n else 0
    return sorted(range(n), key=lambda i: (abs(i - center), i < center))


class Prefetcher:
    """Embeds the slices of one or more axes of a session, nearest the focus first.

    Thread use: :meth:`run_iter` runs in a worker; :meth:`focus` and :meth:`remaining` may be
    called from any thread (they take a lock for microseconds, never wait for the encoder).

    Args:
        session: The session whose cache receives the embeddings.
        axis: Axis the user looks along first.
        index: Slice the user looks at (None: the middle slice).
        axes: Axes to embed, the focused axis first (default: just ``axis``).
        batch: Slices per encoder call (1 keeps every step short, so a new focus is honoured
            after at most one slice).
    """

    def __init__(
        self,
        session: Session,
        axis: int = 0,
        index: int | None = None,
        axes: Iterable[int] | None = None,
        batch: int = 1,
    ) -> None:
        self.session = session
        self.axes = tuple(dict.fromkeys([axis, *(axes if axes is not None else (axis,))]))
        for a in self.axes:
            session._check_slice(a, 0)
        self.batch = max(1, int(batch))
        self._lock = threading.Lock()
        self._axis = axis
        self._index = session.n_slices(axis) // 2 if index is None else int(index)
        self.computed = 0

    def focus(self, axis: int, index: int) -> None:
        """The user now looks at slice ``index`` along ``axis``: embed around it next."""
        with self._lock:
            self._axis, self._index = int(axis), int(index)

    @property
    def total(self) -> int:
        """Slices of all prefetched axes."""
        return sum(self.session.n_slices(a) for a in self.axes)

    def _order(self) -> list[tuple[int, int]]:
        """Every ``(axis, index)`` in priority order.

        The focused axis nearest the focus first, then the other axes from their middle out.
        """
        with self._lock:
            axis, index = self._axis, self._index
        axes = [axis] + [a for a in self.axes if a != axis] if axis in self.axes else self.axes
        out = []
        for a in axes:
            center = index if a == axis else self.session.n_slices(a) // 2
            out += [(a, i) for i in nearest_first(self.session.n_slices(a), center)]
        return out

    def next_batch(self) -> list[tuple[int, int]]:
        """The next slices to embed (same axis, at most ``batch``), or [] when all are done."""
        chunk: list[tuple[int, int]] = []
        for a, i in self._order():
            if self.session.is_embedded(a, i) or (chunk and a != chunk[0][0]):
                continue
            chunk.append((a, i))
            if len(chunk) == self.batch:
                break
        return chunk

    def remaining(self) -> int:
        """Slices not yet embedded (disk hits count as embedded)."""
        return sum(
            not self.session.is_embedded(a, i)
            for a in self.axes
            for i in range(self.session.n_slices(a))
        )

    def run_iter(self) -> Work[int]:
        """Embed every slice of :attr:`axes`, re-reading the focus before each batch.

        Yields:
            :class:`~fmseg.progress.Progress` after each batch (done / total slices,
            counting slices found in the cache as done).

        Returns:
            The number of slices this run computed (0 when all were cached).
        """
        total = self.total
        while chunk := self.next_batch():
            self.session.embed_slices(chunk[0][0], [i for _, i in chunk])
            self.computed += len(chunk)
            done = total - self.remaining()
            a, i = chunk[-1]
            yield Progress(done, total, f"embedded slice {i} along axis {a} ({done}/{total})")
        return self.computed
