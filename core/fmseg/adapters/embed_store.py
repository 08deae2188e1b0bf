"""Image embeddings of a frozen 2D encoder, keyed by content hash, shared by training and apply.

Few-shot training on a frozen encoder spends most of its first seconds embedding the annotated
slices. :class:`SliceEmbedder` runs the encoder only on model inputs it has not seen:

* in memory, for the life of the adapted model: the first apply of a freshly trained adapter
  reuses the training slices' embeddings (the same pass, not a second one);
* on disk (fp16, atomic, under ``$FMSEG_CACHE/adapter-embeddings``), for training slices only,
  so that training again on the same slices (another method, more slices, a new run of the
  CLI) does not embed them again. Applied slices are kept in memory only: a whole volume
  would be hundreds of megabytes on disk.

The key is the base weights' fingerprint + the registry name + a hash of the exact model input
(``(3, S, S)`` after windowing and resizing), so a different image, window, frame or base
never reuses a stale embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..interactive.cache import EmbeddingCache, array_digest
from ..interactive.predictor import SamPredictor
from ..registry import get_spec
from ..weights import cache_dir

#: In-memory budget of one adapted model's embeddings (LiteMedSAM: 4 MiB per slice in fp32,
#: so 64 slices: the training slices and a stretch of applied ones; older ones are dropped,
#: training slices stay on disk).
MEMORY_BYTES = 256 << 20
#: Sub-folder of the fmseg cache holding training-slice embeddings.
DISK_FOLDER = "adapter-embeddings"


def disk_dir() -> Path:
    """Where training-slice embeddings are kept between runs."""
    return cache_dir() / DISK_FOLDER


class SliceEmbedder:
    """The frozen encoder of an adapted 2D model behind a content-hash cache.

    Args:
        model: A :class:`~fmseg.adapters.bases.SamAdapted` whose encoder is frozen.
        disk: Folder for persisted embeddings; None keeps everything in memory.

    Attributes:
        encoder_calls: Encoder batches actually run (tests and benchmarks check reuse).
        hits: Inputs served from memory or disk.
    """

    def __init__(self, model, disk: Path | None = None) -> None:
        self.model = model
        # The frozen encoder runs on the interactive fast path (fused, ONNX Runtime on CPU).
        self.predictor = SamPredictor(model.net, get_spec(model.base_id).normalisation)
        self.memory = EmbeddingCache(MEMORY_BYTES)
        self.disk = EmbeddingCache(0, disk) if disk is not None else None
        self.encoder_calls = 0
        self.hits = 0

    def key(self, x: torch.Tensor) -> str:
        """Cache key of one ``(3, S, S)`` model input."""
        digest = array_digest(x.detach().to("cpu", torch.float32).contiguous().numpy())
        return f"{self.model.base_id}:{self.model.fingerprint}:{digest}"

    def _lookup(self, key: str) -> torch.Tensor | None:
        value = self.memory.get(key)
        if value is None and self.disk is not None:
            value = self.disk.get(key)
            if value is not None:
                self.memory.put(key, value)
        return value

    def __call__(self, inputs: torch.Tensor, persist: bool = False) -> torch.Tensor:
        """``(B, 3, S, S)`` model inputs -> ``(B, C, h, w)`` embeddings on the model's device.

        Args:
            inputs: Model inputs exactly as the encoder takes them.
            persist: Also write newly computed embeddings to disk (training slices).
        """
        keys = [self.key(x) for x in inputs]
        found = [self._lookup(k) for k in keys]
        todo = [i for i, v in enumerate(found) if v is None]
        self.hits += len(keys) - len(todo)
        if todo:
            self.encoder_calls += 1
            with torch.inference_mode():
                new = self.predictor.embed_batch(inputs[todo]).float()
            for i, emb in zip(todo, new, strict=True):
                found[i] = emb.clone()
                self.memory.put(keys[i], found[i])
                if persist and self.disk is not None:
                    self.disk.put(keys[i], found[i])
        dev = self.model.device
        return torch.stack([v.to(dev, torch.float32) for v in found])


def embedder_of(model, persist_dir: Path | None | bool = True) -> SliceEmbedder:
    """The model's one :class:`SliceEmbedder` (created on first use, then shared).

    Args:
        model: Adapted 2D model with a frozen encoder.
        persist_dir: True: the default :func:`disk_dir`; a folder; False/None: memory only.
            Only used when the embedder is created.
    """
    emb = getattr(model, "_slice_embedder", None)
    if emb is None:
        folder = disk_dir() if persist_dir is True else (persist_dir or None)
        emb = SliceEmbedder(model, folder)
        model._slice_embedder = emb
    return emb
