"""Bounded cache of slice embeddings, in memory with optional spill to disk."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch


def array_digest(array: np.ndarray) -> str:
    """Short content hash of an array (dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str((array.dtype.str, array.shape)).encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


class EmbeddingCache:
    """LRU cache of ``(1, C, h, w)`` embeddings keyed by strings.

    Keys are built by the caller from data hash + model + axis + slice + window, so a
    different image or model never hits a stale entry.

    Args:
        max_bytes: In-memory budget; the least recently used entries are evicted past it.
        disk_dir: Optional folder where every entry is also written (fp16, atomically) and
            read back after eviction or in a later session.
    """

    def __init__(self, max_bytes: int = 1 << 30, disk_dir: str | os.PathLike | None = None):
        self.max_bytes = max_bytes
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        # A worker thread embeds the volume while the GUI thread decodes clicks.
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._items:
                return True
        return self._path(key) is not None and self._path(key).is_file()

    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return self._bytes

    def _path(self, key: str) -> Path | None:
        if self.disk_dir is None:
            return None
        return self.disk_dir / (hashlib.sha1(key.encode()).hexdigest() + ".pt")

    def get(self, key: str) -> torch.Tensor | None:
        """The cached tensor or None; a disk hit is promoted to memory."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        path = self._path(key)
        if path is not None and path.is_file():
            value = torch.load(path, map_location="cpu", weights_only=True).float()
            self._store(key, value)
            return value
        return None

    def put(self, key: str, value: torch.Tensor) -> None:
        """Store a tensor (kept on its device in memory; fp16 on disk)."""
        self._store(key, value)
        path = self._path(key)
        if path is not None and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
            os.close(fd)
            torch.save(value.detach().to("cpu", torch.float16), tmp)
            os.replace(tmp, path)

    def _store(self, key: str, value: torch.Tensor) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key).nbytes
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        """Forget the in-memory entries (disk entries stay)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
