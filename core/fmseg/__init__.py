"""fmseg: foundation-model segmentation for medical images (PyTorch core).

Public API (numpy in, numpy out)::

    from fmseg import Session, Box, Point, load_volume
    vol = load_volume("ct.nii.gz")
    s = Session.from_registry(vol.array, "litemedsam", spacing=vol.spacing)
    mask2d = s.set_box(axis=2, index=40, box=Box(30, 40, 90, 100))
    result = drain(s.propagate_iter(axis=2, index=40))
"""

from .interactive.cache import EmbeddingCache
from .interactive.predictor import Prediction, SamPredictor, SliceEmbedding
from .interactive.prompts import Box, Point, PromptError, Prompts
from .interactive.session import Session
from .io import Volume, load_volume, save_labels
from .progress import Cancelled, Progress, drain
from .registry import REGISTRY, ModelSpec, get_spec, load_model
from .weights import WeightsError, WeightsSource
from .window import Window

__all__ = [
    "REGISTRY",
    "Box",
    "Cancelled",
    "EmbeddingCache",
    "ModelSpec",
    "Point",
    "Prediction",
    "Progress",
    "PromptError",
    "Prompts",
    "SamPredictor",
    "Session",
    "SliceEmbedding",
    "Volume",
    "WeightsError",
    "WeightsSource",
    "Window",
    "drain",
    "get_spec",
    "load_model",
    "load_volume",
    "save_labels",
]
