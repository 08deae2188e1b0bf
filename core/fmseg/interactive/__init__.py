"""The interactive pipeline: prompts -> predictor (cached embeddings) -> session, propagation.

Modules, in dependency order:

- ``prompts``      Point, Box, Prompts (frozen dataclasses, validation)
- ``refine``       model-free corrective clicks on a box prediction
- ``cache``        EmbeddingCache: bounded LRU in memory, optional fp16 on disk
- ``accel``        fused inference copies, cached ONNX Runtime encoder (CPU default)
- ``predictor``    SamPredictor: slice -> embedding; embedding + prompts -> mask
- ``propagation``  slice-to-slice propagation over a mask stack (no Session import)
- ``session``      Session: volume, cached embeddings, prompts, working mask, labels, undo

The most used names are also exported by :mod:`fmseg` itself.
"""

from .accel import (
    BACKENDS,
    build_encoder,
    export_onnx,
    fuse_for_inference,
    is_fusable,
    onnx_path,
    weights_key,
)
from .cache import EmbeddingCache, array_digest
from .predictor import Prediction, SamPredictor, SliceEmbedding
from .prompts import Box, Point, PromptError, Prompts
from .propagation import (
    PropagationResult,
    PropagationSettings,
    keep_connected,
    next_slice_mask,
    propagate_iter,
)
from .refine import interior_distance, largest_component, refine_with_click
from .session import Session, registry_predictor

__all__ = [
    "BACKENDS",
    "Box",
    "EmbeddingCache",
    "Point",
    "Prediction",
    "PromptError",
    "Prompts",
    "PropagationResult",
    "PropagationSettings",
    "SamPredictor",
    "Session",
    "SliceEmbedding",
    "array_digest",
    "build_encoder",
    "export_onnx",
    "fuse_for_inference",
    "interior_distance",
    "is_fusable",
    "keep_connected",
    "largest_component",
    "next_slice_mask",
    "onnx_path",
    "propagate_iter",
    "refine_with_click",
    "registry_predictor",
    "weights_key",
]
