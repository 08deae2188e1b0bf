"""In-context segmentation: segment new slices from a support set of annotated examples.

Backends (one interface, :class:`Backend`): a UniverSeg-type network (fmseg's shipped
``incontext-small`` or the reference ``universeg-v1`` from your checkpoint), a training-free
prototype matcher on a promptable model's features, and three baselines (intensity window,
nearest support, signed-distance interpolation). Example::

    from fmseg.incontext import SupportSet, add_slice, build_backend, segment_volume_iter
    s = SupportSet()
    add_slice(s, ct, labels, axis=0, index=70, window=(-160, 240))
    res = drain(segment_volume_iter(build_backend("incontext-small"), s, ct, 0, (-160, 240)))
"""

from .backends import Backend, Supports, UniverSegBackend
from .baselines import IntensityBackend, InterpolationBackend, NearestBackend
from .factory import BACKENDS, SAMPLERS, build_backend, build_sampler
from .prototype import PrototypeBackend
from .segment import (
    InContextResult,
    add_slice,
    combine,
    segment_slices_iter,
    segment_volume_iter,
    volume_source,
    volume_window,
)
from .stochastic import AugmentedSampler, TycheBackend, sample_slices_iter, sample_volume_iter
from .suggest import Suggestion, Suggestions, suggest_slices, suggest_slices_iter
from .support import SupportExample, SupportSet, normalise

__all__ = [
    "BACKENDS",
    "SAMPLERS",
    "Suggestion",
    "Suggestions",
    "suggest_slices",
    "suggest_slices_iter",
    "AugmentedSampler",
    "TycheBackend",
    "build_sampler",
    "sample_slices_iter",
    "sample_volume_iter",
    "Backend",
    "InContextResult",
    "IntensityBackend",
    "InterpolationBackend",
    "NearestBackend",
    "PrototypeBackend",
    "SupportExample",
    "SupportSet",
    "Supports",
    "UniverSegBackend",
    "add_slice",
    "build_backend",
    "combine",
    "normalise",
    "segment_slices_iter",
    "segment_volume_iter",
    "volume_source",
    "volume_window",
]
