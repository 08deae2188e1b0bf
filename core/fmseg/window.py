"""The intensity window: the one rule mapping raw intensities to what a model sees.

Every path (interactive :class:`~fmseg.interactive.session.Session`, in-context supports and
queries, Tyche sampling, adapter training and applying) resolves its window here, so that a volume
gets the same ``(low, high)`` whichever tool runs on it, and a model is applied with the
window it was trained with. Two policies:

* ``Window.fixed(low, high)``: a preset in the image's units, e.g. a CT window in HU or the
  contrast limits a clinician set in a viewer; the same range on every volume.
* ``Window.percentiles(0.5, 99.5)`` (the default, as MedSAM does for non-CT images): the
  range between two percentiles of the volume itself, so MR of any scaling maps alike.

Example::

    win = Window.fixed(-160, 240)
    low, high = intensity_window(ct, win)            # (-160.0, 240.0)
    low, high = intensity_window(mr, None)           # 0.5-99.5 percentiles of ``mr``
    Window.from_dict(win.to_dict()) == win
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_WINDOW", "MODES", "Window", "WindowLike", "intensity_window"]

#: The policies a :class:`Window` can follow.
MODES = ("fixed", "percentiles")
#: Above this many voxels, percentiles are taken on an evenly strided sample (fast, and
#: within a fraction of a grey level of the exact ones on medical volumes).
_SAMPLE = 2_000_000


@dataclass(frozen=True)
class Window:
    """How to pick the ``(low, high)`` intensity range of a volume.

    Attributes:
        mode: ``"fixed"`` (``low``/``high`` are intensities) or ``"percentiles"`` (``low``/
            ``high`` are percentiles in [0, 100] of the volume the window is resolved on).
        low: Lower intensity or percentile.
        high: Upper intensity or percentile.
    """

    mode: str = "percentiles"
    low: float = 0.5
    high: float = 99.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"window mode must be one of {MODES}, not '{self.mode}'")
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))
        if self.mode == "percentiles" and not 0 <= self.low < self.high <= 100:
            raise ValueError(f"window percentiles need 0 <= low < high <= 100, got {self}")

    @classmethod
    def fixed(cls, low: float, high: float) -> Window:
        """The same ``(low, high)`` intensities on every volume."""
        return cls("fixed", low, high)

    @classmethod
    def percentiles(cls, low: float = 0.5, high: float = 99.5) -> Window:
        """The ``low``-th to ``high``-th percentiles of each volume."""
        return cls("percentiles", low, high)

    @classmethod
    def of(cls, window: WindowLike) -> Window:
        """A :class:`Window` from a window, an explicit ``(low, high)``, or None (default)."""
        if window is None:
            return DEFAULT_WINDOW
        if isinstance(window, Window):
            return window
        low, high = window
        return cls.fixed(low, high)

    def resolve(self, volume: np.ndarray) -> tuple[float, float]:
        """The ``(low, high)`` of ``volume`` (any shape, finite values); ``high > low``.

        A fixed window never reads ``volume``. A degenerate range (constant image, or
        ``low == high``) is widened to ``(low, low + 1)``.
        """
        if self.mode == "fixed":
            low, high = self.low, self.high
        else:
            flat = np.asarray(volume).ravel()
            sample = flat[:: max(1, flat.size // _SAMPLE)]
            low, high = (float(v) for v in np.percentile(sample, (self.low, self.high)))
        return (low, high) if high > low else (low, low + 1.0)

    def to_dict(self) -> dict:
        """Plain dict for adapter files and support-set metadata."""
        return {"mode": self.mode, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: dict | None) -> Window:
        """Inverse of :meth:`to_dict`; None gives the default policy.

        Files written before windows were stored hold None, and were made with the default.
        """
        return DEFAULT_WINDOW if d is None else cls(d["mode"], d["low"], d["high"])


#: What a function taking a window accepts: a policy, an explicit ``(low, high)``, or None.
WindowLike = Window | tuple[float, float] | None
#: The default policy: 0.5-99.5 percentiles of the volume.
DEFAULT_WINDOW = Window()


def intensity_window(volume: np.ndarray, window: WindowLike = None) -> tuple[float, float]:
    """The ``(low, high)`` intensity range used to map ``volume`` to the model's input range.

    Args:
        volume: Any-dimensional intensity array (finite values).
        window: A :class:`Window`, an explicit ``(low, high)`` (a fixed window), or None for
            :data:`DEFAULT_WINDOW`.
    """
    return Window.of(window).resolve(volume)
