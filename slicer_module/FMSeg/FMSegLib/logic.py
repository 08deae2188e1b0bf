"""FMSegLogic: everything the FMSeg module computes, with no GUI (usable from scripts and tests).

Every action has three steps, so the Widget can run the middle one in a background thread:

1. **read** (main thread): MRML nodes -> a :class:`VolumeInput` / masks / :class:`SlicePrompts`;
2. **work** (any thread): a ``*_iter`` generator over numpy arrays through fmseg's public API,
   yielding :class:`fmseg.Progress` and returning arrays; it never touches MRML or Qt;
3. **write** (main thread): arrays -> segments / volumes, with undo through
   ``vtkSegmentationHistory``, the mechanism the Segment Editor uses.

Arrays are ``(K, J, I)`` as ``slicer.util.arrayFromVolume`` gives them; :mod:`fmseg.coords`
converts between them and RAS. Few-shot adapters live in :mod:`FMSegLib.adapters`
(:class:`~FMSegLib.adapters.AdapterLogic`, a mixin of :class:`FMSegLogic`), corrective
clicks on in-context results in :mod:`FMSegLib.corrections` (``CorrectionLogic``, another
mixin), uncertainty outputs (samples, mean, disagreement / total uncertainty maps with their
legends) in :mod:`FMSegLib.uncertainty`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer

from fmseg import Progress, Session, Window, coords
from fmseg.incontext import (
    InContextResult,
    SupportSet,
    add_slice,
    build_backend,
    build_sampler,
    sample_volume_iter,
    segment_volume_iter,
    volume_source,
)
from fmseg.progress import Work
from fmseg.registry import ModelLoader, load_model
from fmseg.uncertainty import DEFAULT_MAP
from fmseg.window import intensity_window

from . import markups, mrml
from .adapters import AdapterFile, AdapterLogic
from .corrections import CorrectionLogic, InContextRun
from .markups import SlicePrompts
from .uncertainty import UncertaintyNodes, write_uncertainty


@dataclass(frozen=True, eq=False)
class VolumeInput:
    """A volume read on the main thread, safe to hand to a background thread.

    Attributes:
        node_id: MRML ID of the volume node.
        array: ``(K, J, I)`` float32 copy of the voxels.
        ijk_to_ras: The node's ``IJKToRAS`` matrix.
        mtime: Modification time of the image data (a changed volume gets a new session).
        window: The intensity window: the display node's window/level (what the user
            sees), or None (no display node: the default policy).
    """

    node_id: str
    array: np.ndarray
    ijk_to_ras: np.ndarray
    mtime: int
    window: Window | None = None

    @property
    def key(self) -> tuple[str, int, Window | None]:
        """Identity of this version of the volume, as the models see it."""
        return self.node_id, self.mtime, self.window

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along the array axes ``(K, J, I)``."""
        return coords.array_spacing(self.ijk_to_ras)


def support_slices(mask: np.ndarray, axis: int, max_slices: int) -> list[int]:
    """Up to ``max_slices`` evenly spread indices along ``axis`` where ``mask`` has voxels."""
    other = tuple(a for a in range(3) if a != axis)
    filled = np.flatnonzero(np.asarray(mask).any(axis=other))
    if len(filled) <= max_slices:
        return [int(i) for i in filled]
    picks = np.unique(np.rint(np.linspace(0, len(filled) - 1, max_slices)).astype(int))
    return [int(filled[p]) for p in picks]


class FMSegLogic(AdapterLogic, CorrectionLogic):
    """The FMSeg module's computation, on one MRML scene.

    Args:
        scene: The MRML scene (default ``slicer.mrmlScene``).
        model: Registry name of the promptable model.
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available).
        load: How sessions, backends, samplers and adapters get their networks (None:
            :func:`fmseg.registry.load_model`, the real weights; :func:`fmseg.registry.load_tiny`
            builds tiny random-weight models for tests and the self-test).
    """

    def __init__(
        self,
        scene=None,
        model: str = "litemedsam",
        device: str | None = None,
        load: ModelLoader | None = None,
    ) -> None:
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.model, self.device = model, device
        self.load = load or load_model
        self.support = SupportSet()
        self.training: list = []  # fmseg.adapters.data.Annotation, see add_training
        self._sessions: dict[str, tuple[tuple, Session]] = {}
        self._histories: dict[str, Any] = {}
        self._networks: dict[tuple, Any] = {}
        self._volume_stats: dict[tuple, tuple[tuple[float, float], str]] = {}

    # -- read (main thread) -----------------------------------------------------------------
    def read_volume(self, volume_node) -> VolumeInput:
        """Copy a scalar volume's voxels and geometry for the work step."""
        array = mrml.volume_array(volume_node)
        mtime = volume_node.GetImageData().GetMTime()
        shown = mrml.display_window(volume_node)
        window = None if shown is None else Window.fixed(*shown)
        return VolumeInput(volume_node.GetID(), array, mrml.ijk_to_ras(volume_node), mtime, window)

    def view_axis(self, volume_node, view: str = "axial") -> int:
        """The array axis to slice along for a slice view ("axial", "coronal", "sagittal")."""
        return coords.slice_axis(mrml.ijk_to_world(volume_node), view)

    def read_prompts(
        self, volume_node, view: str = "axial", positive=None, negative=None, roi=None,
        scribbles=(), lasso=None,
    ) -> SlicePrompts:  # fmt: skip
        """Markups (points on object / background, an ROI, curves, a closed curve) -> prompts.

        See :func:`FMSegLib.markups.prompts_from_markups` (curves are scribbles, a closed
        curve is a lasso).
        """
        axis = self.view_axis(volume_node, view)
        return markups.prompts_from_markups(
            volume_node, axis, positive, negative, roi, scribbles, lasso
        )

    def read_segment(self, segmentation_node, segment: str, volume_node) -> np.ndarray:
        """A segment on the volume's grid, ``(K, J, I)`` bool."""
        return mrml.segment_array(segmentation_node, segment, volume_node)

    # -- promptable segmentation (work) -------------------------------------------------------
    def session_iter(
        self, volume: VolumeInput, adapter: AdapterFile | None = None
    ) -> Work[Session]:
        """The volume's :class:`fmseg.Session`, made (model loading) on first use.

        With a box-head ``adapter`` (:meth:`read_adapter`) the session's model is the adapter's
        base with the adapter merged in, run with the window it was trained with; the volume's
        session is remade when this changes. Without, the window is the volume's (as shown).
        """
        key = (volume.key, None if adapter is None else adapter.key)
        cached = self._sessions.get(volume.node_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        model = self.model if adapter is None else adapter.base
        yield Progress(0, 1, f"loading {model}" + ("" if adapter is None else " + adapter"))
        session = Session.from_registry(
            volume.array, model, spacing=volume.spacing, device=self.device,
            load=self.load, adapter=None if adapter is None else adapter.path,
            window=volume.window if adapter is None else None,
        )  # fmt: skip
        self._sessions[volume.node_id] = (key, session)
        return session

    def segment_slice_iter(
        self, volume: VolumeInput, prompts: SlicePrompts, adapter: AdapterFile | None = None
    ) -> Work[np.ndarray]:
        """Segment the prompted slice (with a box-head adapter, if given); returns ``(H, W)``."""
        session = yield from self.session_iter(volume, adapter)
        yield Progress(0, 1, f"segmenting slice {prompts.index}")
        mask = session.set_prompts(prompts.axis, prompts.index, prompts.prompts)
        yield Progress(1, 1, f"slice {prompts.index}: {int(mask.sum())} pixels")
        return mask

    def propagate_iter(
        self, volume: VolumeInput, prompts: SlicePrompts, adapter: AdapterFile | None = None
    ) -> Work[np.ndarray]:
        """Segment the prompted slice, then propagate it; returns the ``(K, J, I)`` object."""
        yield from self.segment_slice_iter(volume, prompts, adapter)
        session = self._sessions[volume.node_id][1]
        yield from session.propagate_iter(prompts.axis, prompts.index)
        return session.mask.copy()

    def new_object(self, volume_node) -> None:
        """Forget the prompts of the volume's working object (the segment is kept)."""
        cached = self._sessions.get(volume_node.GetID())
        if cached is not None:
            cached[1].reset_object()

    def start_from_mask_iter(self, volume: VolumeInput, mask: np.ndarray) -> Work[int]:
        """Make a ``(K, J, I)`` mask (a segment, :meth:`read_segment`) the working object.

        Segment, propagate and clicks then edit it (one undo step); returns its voxel count.
        """
        cached = self._sessions.get(volume.node_id)
        if cached is not None and cached[0][0] == volume.key:  # keep its adapter and history
            return cached[1].set_working_mask(mask)
        session = yield from self.session_iter(volume)
        return session.set_working_mask(mask)

    def step_history(self, volume_node, redo: bool = False) -> tuple[str, np.ndarray] | None:
        """Undo (or redo) the last interaction of the volume's working object.

        The core session's per-interaction history (prompts, propagation, start from a
        segment); returns ``(what was undone, the (K, J, I) working object)`` for
        :meth:`write_segment`, or None when there is nothing to undo (redo).
        """
        cached = self._sessions.get(volume_node.GetID())
        if cached is None:
            return None
        session = cached[1]
        name = session.history.redo(session) if redo else session.history.undo(session)
        return None if name is None else (name, session.mask.copy())

    # -- write (main thread), with undo ---------------------------------------------------
    def _history(self, segmentation_node):
        history = self._histories.get(segmentation_node.GetID())
        if history is None or history.GetSegmentation() is not segmentation_node.GetSegmentation():
            history = slicer.vtkSegmentationHistory()
            history.SetSegmentation(segmentation_node.GetSegmentation())
            self._histories[segmentation_node.GetID()] = history
        return history

    def write_segment(self, segmentation_node, name: str, mask: np.ndarray, volume_node) -> str:
        """Replace segment ``name`` with a ``(K, J, I)`` mask (undoable); returns its ID."""
        self._history(segmentation_node).SaveState()
        return mrml.set_segment(segmentation_node, name, mask, volume_node)

    def write_slice(
        self, segmentation_node, name: str, volume_node, prompts: SlicePrompts, mask: np.ndarray
    ) -> str:
        """Replace one slice of segment ``name`` with a 2D mask (other slices are kept)."""
        try:
            full = self.read_segment(segmentation_node, name, volume_node)
        except KeyError:
            full = np.zeros(tuple(reversed(volume_node.GetImageData().GetDimensions())), bool)
        where = [slice(None)] * 3
        where[prompts.axis] = prompts.index
        full[tuple(where)] = mask
        return self.write_segment(segmentation_node, name, full, volume_node)

    def undo(self, segmentation_node) -> bool:
        """Restore the segmentation as it was before the last write; False if none."""
        history = self._histories.get(segmentation_node.GetID())
        if history is None or not history.IsRestorePreviousStateAvailable():
            return False
        return bool(history.RestorePreviousState())

    # -- in-context support set ---------------------------------------------------------
    def _stats(self, volume: VolumeInput) -> tuple[tuple[float, float], str]:
        """Intensity window and identity of a volume, computed once per version."""
        if volume.key not in self._volume_stats:
            window = intensity_window(volume.array, volume.window)
            self._volume_stats[volume.key] = (window, volume_source(volume.array))
        return self._volume_stats[volume.key]

    def label_value(self, segment_name: str) -> int:
        """The support set's label value for a structure, assigned on first use."""
        for value, name in self.support.names.items():
            if name == segment_name:
                return value
        value = max(self.support.names, default=0) + 1
        self.support.names[value] = segment_name
        return value

    def add_support(
        self, volume_node, segmentation_node, segment: str, view: str = "axial", max_slices=8
    ) -> int:
        """Add slices of a segment (and its volume) to the support set; returns how many.

        Raises:
            ValueError: The segment is empty on this volume.
        """
        volume = self.read_volume(volume_node)
        mask = self.read_segment(segmentation_node, segment, volume_node)
        axis = self.view_axis(volume_node, view)
        indices = support_slices(mask, axis, max_slices)
        if not indices:
            raise ValueError(f"segment '{segment}' is empty on '{volume_node.GetName()}'")
        label = self.label_value(segment)
        window, source = self._stats(volume)
        labels = mask.astype(np.int32) * label
        for i in indices:
            add_slice(self.support, volume.array, labels, axis, i, window, label, source)
        return len(indices)

    def _network(self, kind: str, name: str, k: int = 0):
        key = (kind, name, k)
        if key not in self._networks:
            if kind == "sampler":
                net = build_sampler(name, k=k, device=self.device, load=self.load)
            else:
                net = build_backend(name, device=self.device, load=self.load)
            self._networks[key] = net
        return self._networks[key]

    def incontext_iter(
        self, volume: VolumeInput, axis: int, backend: str = "auto"
    ) -> Work[InContextResult]:
        """Segment every slice along ``axis`` from the support set (one pass per structure).

        The result is kept for corrections (:meth:`correct_slice_iter`); with ``auto`` its
        ``path_counts()`` say which slices took the prior path (:meth:`incontext_summary`).
        """
        window, source = self._stats(volume)
        net = self._network("backend", backend)
        result = yield from segment_volume_iter(
            net, self.support, volume.array, axis, window, source=source
        )
        probs = {v: p.copy() for v, p in result.probs.items()}  # corrections refine these
        self.last_incontext = InContextRun(volume.key, axis, backend, probs)
        return result

    def write_incontext(self, result: InContextResult, segmentation_node, volume_node) -> list:
        """One segment per support structure, named like the segment it was learned from.

        Logs :meth:`incontext_summary` (which path the slices took, for ``auto``).
        """
        ids = [
            self.write_segment(segmentation_node, name, result.labels == value, volume_node)
            for value, name in sorted(self.support.names.items())
            if value in result.probs
        ]
        logging.info("FMSeg in-context: %s", self.incontext_summary(result))
        return ids

    # -- uncertainty --------------------------------------------------------------------
    def sample_iter(
        self,
        volume: VolumeInput,
        axis: int,
        sampler: str = "tyche-small",
        k: int = 8,
        segment: str | None = None,
    ) -> Work[np.ndarray]:
        """``(K, *volume.shape)`` plausible segmentations (probabilities) of one structure."""
        window, source = self._stats(volume)
        label = None if segment is None else self.label_value(segment)
        net = self._network("sampler", sampler, k)
        return (
            yield from sample_volume_iter(
                net, self.support, volume.array, axis, window, label, source=source
            )
        )

    def write_uncertainty(
        self, samples: np.ndarray, volume_node, name: str, kinds=(DEFAULT_MAP,)
    ) -> UncertaintyNodes:
        """Samples as a sequence, the mean, and the maps ``kinds`` (default: disagreement).

        ``kinds`` are names of :data:`fmseg.uncertainty.MAPS` (``"total"``: total uncertainty);
        each map node carries its legend (:mod:`FMSegLib.uncertainty`).
        """
        return write_uncertainty(self.scene, samples, volume_node, name, kinds)
