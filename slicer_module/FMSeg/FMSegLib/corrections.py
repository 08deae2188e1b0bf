"""Corrective clicks on an in-context result in the FMSeg module, and keeping the corrected slice.

:class:`CorrectionLogic` is a mixin of :class:`~FMSegLib.logic.FMSegLogic` and follows its
read -> work -> write split:

* **read** (main thread): :meth:`~CorrectionLogic.read_clicks` turns the positive / negative
  Markups point lists (the prompt nodes; a positive point described "negative" counts as
  background) into :class:`~fmseg.incontext.prior.Clicks` in ``(row, col)`` of one array slice
  (RAS -> array index with :mod:`fmseg.coords`, as the prompt path does);
* **work** (background thread): :meth:`~CorrectionLogic.correct_slice_iter` re-segments that
  slice of the last in-context result with every click on it;
* **write** (main thread): :meth:`~CorrectionLogic.write_correction` replaces that slice of
  the structure's segment (undoable).

Then "add corrected slice to the support set" is :meth:`~CorrectionLogic.add_corrected_slice`
(main thread, quick: it returns the slices whose result changes),
:meth:`~CorrectionLogic.resegment_iter` (work) and :meth:`~CorrectionLogic.write_resegmented`
(write: only those slices of the segment change).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fmseg import Progress, Prompts
from fmseg.incontext import InContextResult, segment_volume_iter
from fmseg.incontext.correct import add_corrected_slice, correct_slice, pick_label, takes_clicks
from fmseg.incontext.prior import Clicks
from fmseg.progress import Work
from fmseg.report import describe_paths

from . import markups
from .markups import SlicePrompts


@dataclass(frozen=True)
class SliceClicks:
    """Corrective clicks on one slice ``np.take(volume, index, axis)``.

    Attributes:
        axis: Slicing axis of the ``(K, J, I)`` array.
        index: Slice index.
        clicks: ``(row, col)`` points inside (positive) and outside (negative) the structure.
        ignored: Points left out because they lie on other slices.
    """

    axis: int
    index: int
    clicks: Clicks
    ignored: int = 0


@dataclass(frozen=True)
class SliceCorrection:
    """A corrected slice: ``(H, W)`` probabilities of structure ``label``."""

    axis: int
    index: int
    label: int
    probs: np.ndarray
    clicks: int = 0


@dataclass(frozen=True)
class SupportUpdate:
    """A corrected slice added to the support set, and the slices to segment again."""

    axis: int
    index: int
    label: int
    slices: list[int]


@dataclass
class InContextRun:
    """The last in-context result, which corrections refine (probabilities per structure)."""

    volume_key: tuple
    axis: int
    backend: str
    probs: dict[int, np.ndarray] = field(default_factory=dict)

    def previous(self, label: int, index: int) -> np.ndarray | None:
        """The slice's current probabilities (None: structure not segmented)."""
        return None if label not in self.probs else np.take(self.probs[label], index, self.axis)

    def update(self, label: int, slices, values: np.ndarray) -> None:
        """Replace the probabilities of ``slices`` (``values`` shaped like the selection)."""
        if label in self.probs:
            where = [slice(None)] * 3
            where[self.axis] = slices
            self.probs[label][tuple(where)] = values


def _slice_of(axis: int, slices) -> tuple:
    where: list = [slice(None)] * 3
    where[axis] = slices
    return tuple(where)


class CorrectionLogic:
    """Corrections of in-context results (mixin of FMSegLogic; see the module docstring)."""

    last_incontext: InContextRun | None = None
    last_correction: SliceCorrection | None = None

    def incontext_summary(self, result: InContextResult) -> str:
        """What the widget's status line says after an in-context run (and the log)."""
        names = [n for v, n in sorted(self.support.names.items()) if v in result.probs]
        run = self.last_incontext
        paths = describe_paths(run.backend, result.path_counts()) if run is not None else ""
        return f"Segmented {names}." + (f" {paths}." if paths else "")

    # -- read (main thread) -----------------------------------------------------------------
    def read_clicks(
        self, volume_node, view: str = "axial", positive=None, negative=None
    ) -> SliceClicks:
        """Markups points (on the object / background) -> clicks on one array slice.

        The slice is that of the last positive (else negative) point; points on other
        slices are counted in :attr:`SliceClicks.ignored`.
        """
        prompts = markups.prompts_from_markups(
            volume_node, self.view_axis(volume_node, view), positive, negative
        )
        pts = prompts.prompts.points
        pos = tuple((p.y, p.x) for p in pts if p.positive)
        neg = tuple((p.y, p.x) for p in pts if not p.positive)
        return SliceClicks(prompts.axis, prompts.index, Clicks(pos, neg), prompts.ignored)

    def _run(self, volume, axis: int) -> InContextRun:
        run = self.last_incontext
        if run is None or run.volume_key != volume.key or run.axis != axis:
            raise ValueError(
                "segment this volume from examples (same view) first, then correct a slice"
            )
        return run

    def _label(self, segment: str | None) -> int:
        if segment is None:
            return pick_label(self.support, None)
        for value, name in self.support.names.items():
            if name == segment:
                return value
        raise ValueError(f"'{segment}' is not a structure of the support set")

    # -- work ---------------------------------------------------------------------------------
    def correct_slice_iter(
        self, volume, clicks: SliceClicks, segment: str | None = None
    ) -> Work[SliceCorrection]:
        """Re-segment the clicked slice of the last in-context result with its clicks.

        Args:
            volume: The :class:`~FMSegLib.logic.VolumeInput` segmented before.
            clicks: :meth:`read_clicks`.
            segment: The structure to correct (None: the support set's only one).

        Raises:
            ValueError: No in-context result on this volume and axis, a backend without
                clicks, no click, or an unknown structure.
        """
        run = self._run(volume, clicks.axis)
        label = self._label(segment)
        net = self._network("backend", run.backend)
        if not takes_clicks(net):
            raise ValueError(f"'{run.backend}' takes no clicks: segment with auto first")
        window, source = self._stats(volume)
        yield Progress(0, 1, f"correcting slice {clicks.index}")
        probs = correct_slice(
            net, self.support, volume.array, clicks.axis, clicks.index, clicks.clicks,
            run.previous(label, clicks.index), window, label, source,
        )  # fmt: skip
        n = len(clicks.clicks.positive) + len(clicks.clicks.negative)
        return SliceCorrection(clicks.axis, clicks.index, label, probs, n)

    def resegment_iter(self, volume, update: SupportUpdate) -> Work[InContextResult]:
        """Segment the slices :meth:`add_corrected_slice` returned again (one structure)."""
        run = self._run(volume, update.axis)
        window, source = self._stats(volume)
        net = self._network("backend", run.backend)
        return (
            yield from segment_volume_iter(
                net,
                self.support,
                volume.array,
                update.axis,
                window,
                [update.label],
                update.slices,
                source=source,
            )
        )

    # -- write (main thread) ------------------------------------------------------------------
    def _name(self, label: int) -> str:
        return self.support.names.get(label, f"label {label}")

    def write_correction(self, correction: SliceCorrection, segmentation_node, volume_node) -> str:
        """Replace the corrected slice of the structure's segment (undoable); a summary."""
        if (run := self.last_incontext) is not None:
            run.update(correction.label, correction.index, correction.probs)
        self.last_correction = correction
        mask = correction.probs > 0.5
        where = SlicePrompts(correction.axis, correction.index, Prompts())
        self.write_slice(segmentation_node, self._name(correction.label), volume_node, where, mask)
        return (
            f"Slice {correction.index} corrected with {correction.clicks} clicks "
            f"({int(mask.sum())} pixels). Add it to the support set to update the slices around it."
        )

    def add_corrected_slice(
        self, volume_node, segmentation_node, correction: SliceCorrection | None = None
    ) -> SupportUpdate:
        """Add the corrected slice, as the segment now has it, to the support set.

        Args:
            volume_node: The volume corrected.
            segmentation_node: The segmentation holding the structure's segment.
            correction: The slice (None: the last one corrected).

        Returns:
            Where it went and the slices whose result changes (:meth:`resegment_iter`).

        Raises:
            ValueError: Nothing corrected yet, or the slice is empty in the segment.
        """
        fix = correction or self.last_correction
        if fix is None:
            raise ValueError("correct a slice first")
        volume = self.read_volume(volume_node)
        full = self.read_segment(segmentation_node, self._name(fix.label), volume_node)
        window, source = self._stats(volume)
        slices = add_corrected_slice(
            self.support, volume.array, np.take(full, fix.index, fix.axis), fix.axis, fix.index,
            fix.label, window, source,
        )  # fmt: skip
        return SupportUpdate(fix.axis, fix.index, fix.label, slices)

    def write_resegmented(
        self, result: InContextResult, update: SupportUpdate, segmentation_node, volume_node
    ) -> str:
        """Replace only the re-segmented slices of the structure's segment (undoable)."""
        name, where = self._name(update.label), _slice_of(update.axis, update.slices)
        full = self.read_segment(segmentation_node, name, volume_node)
        full[where] = result.labels[where] == update.label
        self.write_segment(segmentation_node, name, full, volume_node)
        if (run := self.last_incontext) is not None:
            run.update(update.label, update.slices, result.probs[update.label][where])
        paths = describe_paths(run.backend, result.path_counts()) if run is not None else ""
        return (
            f"Slice {update.index} added: {len(self.support)} support slices; "
            f"{len(update.slices)} slices of '{name}' updated." + (f" {paths}." if paths else "")
        )
