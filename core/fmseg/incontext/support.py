"""Support sets: annotated example slices that define a structure for in-context segmentation.

Images are stored intensity-normalised to [0, 1] (see :func:`normalise`) so supports from
different volumes and the queries they segment are treated identically; labels are stored
as integer maps so one support set can describe several structures (one pass per label).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..validation import check_volume
from ..window import WindowLike, intensity_window


def normalise(image: np.ndarray, window: WindowLike = None) -> np.ndarray:
    """Map intensities to float32 [0, 1].

    Args:
        image: ``(H, W)`` or ``(N, H, W)`` raw intensities.
        window: A :class:`~fmseg.window.Window` or ``(low, high)`` (e.g. a CT window or
            napari's contrast limits); None uses the default policy on ``image`` itself.
    """
    img = np.asarray(image, dtype=np.float32)
    lo, hi = intensity_window(img, window)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class SupportExample:
    """One annotated slice.

    Attributes:
        image: ``(H, W)`` float32 in [0, 1].
        labels: ``(H, W)`` integer label map (0 = background).
        source: Where it came from (file name or data hash); "" when unknown.
        axis: Slicing axis in the source volume, or -1.
        index: Slice index along ``axis``, or -1.
        window: The ``(low, high)`` that mapped the raw slice to ``image``; None when
            unknown (sets saved before windows were recorded).
    """

    image: np.ndarray
    labels: np.ndarray
    source: str = ""
    axis: int = -1
    index: int = -1
    window: tuple[float, float] | None = None


@dataclass
class SupportSet:
    """An ordered, editable collection of :class:`SupportExample`.

    Attributes:
        examples: The annotated slices.
        names: Optional label value -> structure name.
    """

    examples: list[SupportExample] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    def add(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        window: WindowLike = None,
        source: str = "",
        axis: int = -1,
        index: int = -1,
    ) -> SupportExample:
        """Normalise and append one slice; returns the stored example.

        Raises:
            ValueError: Not 2D, shapes differ, NaN/constant image, or no labelled pixel.
        """
        image = check_volume(image)
        labels = np.asarray(labels)
        if image.ndim != 2 or labels.ndim != 2:
            raise ValueError(
                f"a support example is one 2D slice; got image {image.shape}, labels {labels.shape}"
            )
        if image.shape != labels.shape:
            raise ValueError(f"support image {image.shape} and mask {labels.shape} differ in size")
        if not np.any(labels):
            raise ValueError("this support slice has no labelled pixel; annotate it first")
        win = intensity_window(image, window)
        lab = labels.astype(np.int32)
        ex = SupportExample(normalise(image, win), lab, source, axis, index, win)
        self.examples.append(ex)
        return ex

    def remove(self, i: int) -> SupportExample:
        """Remove and return example ``i``."""
        return self.examples.pop(i)

    def clear(self) -> None:
        """Remove every example."""
        self.examples.clear()

    @property
    def label_values(self) -> list[int]:
        """Sorted label values present in any example."""
        vals = set()
        for ex in self.examples:
            vals.update(int(v) for v in np.unique(ex.labels) if v != 0)
        return sorted(vals)

    def binary(self, label: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Images and boolean masks for one label value (None: any non-zero label).

        Raises:
            ValueError: Empty set, or the label is absent from every example.
        """
        if not self.examples:
            raise ValueError("the support set is empty: add at least one annotated slice")
        masks = [(ex.labels == label) if label else ex.labels > 0 for ex in self.examples]
        if not any(m.any() for m in masks):
            raise ValueError(
                f"label {label} is absent from every support mask; present: {self.label_values}"
            )
        return [ex.image for ex in self.examples], masks

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (``.npz`` arrays) and ``path.json`` (metadata), each atomically."""
        path = Path(path).with_suffix(".npz")
        arrays = {}
        for i, ex in enumerate(self.examples):
            arrays[f"image_{i}"] = ex.image
            arrays[f"labels_{i}"] = ex.labels
        meta = {
            "format": "fmseg-support-set",
            "version": 2,  # 2: each example's window; version 1 files load without it
            "names": {str(k): v for k, v in self.names.items()},
            "examples": [
                {
                    "source": ex.source,
                    "axis": ex.axis,
                    "index": ex.index,
                    "shape": ex.image.shape,
                    "window": None if ex.window is None else list(ex.window),
                }
                for ex in self.examples
            ],
        }
        _atomic(path, lambda f: np.savez_compressed(f, **arrays))
        _atomic(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SupportSet:
        """Read a set written by :meth:`save`.

        Raises:
            ValueError: Missing or inconsistent files.
        """
        path = Path(path).with_suffix(".npz")
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise ValueError(f"support set needs both {path.name} and {meta_path.name}")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "fmseg-support-set":
            raise ValueError(f"{meta_path} is not an fmseg support set")
        out = cls(names={int(k): v for k, v in meta.get("names", {}).items()})
        with np.load(path) as arrays:
            for i, m in enumerate(meta["examples"]):
                try:
                    img, lab = arrays[f"image_{i}"], arrays[f"labels_{i}"]
                except KeyError:
                    raise ValueError(f"{path.name} lacks example {i} listed in the json") from None
                win = tuple(m["window"]) if m.get("window") is not None else None
                out.examples.append(
                    SupportExample(img, lab, m["source"], m["axis"], m["index"], win)
                )
        return out


def _atomic(path: Path, write) -> None:
    """Write via a temporary file in the same folder (mode per the umask), then rename."""
    from ..io import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    write_atomic(path, to_file)
