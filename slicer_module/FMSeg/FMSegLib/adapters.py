"""Few-shot adapters in the FMSeg module: segments -> training data, train + save, apply.

The only code of the module that knows :mod:`fmseg.adapters`. :class:`AdapterLogic` is a mixin
of :class:`~FMSegLib.logic.FMSegLogic` and follows its read -> work -> write split:

* **read** (main thread): :meth:`AdapterLogic.read_annotation` turns a (volume node,
  segmentation node, segment) into a :class:`TrainingAnnotation` in the volume's
  ``(K, J, I)`` array space (label value 1; annotated = the slices along the view axis that
  hold the segment, or the whole volume; the volume's display window as the user saw it);
  :meth:`AdapterLogic.read_adapter` reads an adapter
  file's header and refuses one trained for another base model.
* **work** (background thread): :meth:`AdapterLogic.train_adapter_iter` trains with the first
  training volume's display window (the rule of every FMSeg action: the window the user sees,
  see :func:`training_window`) and saves the file, window included, atomically once training
  ends (a cancelled run writes nothing);
  :meth:`AdapterLogic.apply_adapter_iter` segments a whole volume with a prompt-free (2D
  ``head="auto"`` or 3D) adapter. Box-head adapters go through the prompt path instead
  (``segment_slice_iter(..., adapter=...)``, an :class:`fmseg.Session` with the adapter merged).
* **write** (main thread): the Logic's ``write_segment`` / ``write_slice`` (undoable).

Which head fits a method, the training settings, which slices are annotated and how an adapter
is applied are the core's decisions (:mod:`fmseg.adapters.facade`): this module only calls them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmseg import Progress
from fmseg.adapters import api
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.data import Annotation
from fmseg.adapters.facade import (
    THRESHOLD,
    apply_iter,
    base_dims,
    default_settings,
    labelled_slices,
    resolve_config,
)
from fmseg.adapters.trainer import TrainStep
from fmseg.progress import Work
from fmseg.registry import ModelLoader
from fmseg.window import Window

AdapterError = api.AdapterError


@dataclass(frozen=True)
class AdapterFile:
    """An adapter file's header, read on the main thread before applying it.

    Attributes:
        path: The file.
        base: Registry name of the base model it was trained on.
        method: Its method string.
        head: ``"box"`` (applied with ROI prompts) or ``"auto"`` (prompt-free).
        dims: 2 (slice by slice) or 3 (whole volume on the base's grid).
        metrics: Training metrics stored in the file.
        mtime_ns: Modification time (a rewritten file gets a new session).
    """

    path: str
    base: str
    method: str
    head: str
    dims: int
    metrics: dict = field(default_factory=dict)
    mtime_ns: int = 0

    @property
    def prompted(self) -> bool:
        """True for box-head adapters (they need an ROI on the slice)."""
        return self.head == "box"

    @property
    def key(self) -> tuple[str, int]:
        """Identity of this version of the file."""
        return self.path, self.mtime_ns


@dataclass(frozen=True)
class TrainedAdapter:
    """What a training run wrote.

    Attributes:
        path: The adapter file.
        metrics: Its training metrics (``best_val_dice``, ``steps_run``, ``final_loss``, ...).
        history: One dict per step: ``step``, ``loss``, ``val_dice``.
    """

    path: Path
    metrics: dict
    history: list[dict]

    def summary(self) -> str:
        """One line for the status bar."""
        m = self.metrics
        dice = m.get("best_val_dice")
        text = f"adapter saved to {self.path} ({m.get('steps_run')} steps"
        text += "" if m.get("final_loss") is None else f", final loss {m['final_loss']:.3f}"
        text += f", stopped by the {m['stopped']}" if m.get("stopped") else ""
        return text + ("" if dice is None else f", validation Dice {dice:.3f}") + ")"


@dataclass(frozen=True)
class TrainingAnnotation(Annotation):
    """An :class:`~fmseg.adapters.data.Annotation` read from a volume node, with its window.

    Attributes:
        window: The volume's display window when it was read (what the user saw), or None
            (no display node: the default policy).
    """

    window: Window | None = None


def training_window(annotations: Sequence[Annotation]) -> Window | None:
    """The intensity window an adapter trains with: the first training volume's display window.

    The same rule as the Logic's other actions (``VolumeInput.window``); the adapter file keeps
    it and applying uses it. None (the core's default policy) when that volume had no display
    window, or for annotations not read by :meth:`AdapterLogic.read_annotation`.
    """
    first = annotations[0] if annotations else None
    return first.window if isinstance(first, TrainingAnnotation) else None


def describe_step(step: Progress) -> Progress:
    """A training step whose message also names the validation Dice."""
    if not isinstance(step, TrainStep):
        return step
    return dataclasses.replace(step, message=f"training {step.describe()}")


class AdapterLogic:
    """The adapter half of :class:`~FMSegLib.logic.FMSegLogic` (a mixin).

    Uses the Logic's ``load`` (model loader), ``device``, ``training`` (list of annotations),
    ``read_volume``, ``read_segment`` and ``view_axis``.
    """

    load: ModelLoader
    device: str | None
    training: list[Annotation]

    # -- read (main thread) -----------------------------------------------------------------
    def read_annotation(
        self, volume_node, segmentation_node, segment: str, view: str = "axial", whole=False
    ) -> TrainingAnnotation:
        """A segment on its volume as training data (label value 1, the volume's window).

        Args:
            volume_node: The image.
            segmentation_node: Segmentation holding the segment.
            segment: Segment name or ID.
            view: Slice view whose volume axis the annotated slices lie on.
            whole: The whole volume is annotated (voxels outside the segment are background);
                otherwise only the slices holding the segment are known, the rest is unknown.

        Raises:
            ValueError: The segment is empty on this volume.
        """
        volume = self.read_volume(volume_node)
        mask = self.read_segment(segmentation_node, segment, volume_node)
        axis = self.view_axis(volume_node, view)
        slices = labelled_slices(mask, axis)
        if not slices:
            raise ValueError(f"segment '{segment}' is empty on '{volume_node.GetName()}'")
        labels = mask.astype(np.uint8)
        return TrainingAnnotation(
            volume.array, labels, 1, axis, None if whole else slices, volume.spacing,
            volume.window,
        )  # fmt: skip

    def add_training(self, volume_node, segmentation_node, segment: str, view="axial", whole=False):
        """Add a segment (and its volume) to the training set; returns the set's size."""
        self.training.append(
            self.read_annotation(volume_node, segmentation_node, segment, view, whole)
        )
        return len(self.training)

    def read_adapter(self, path: str | os.PathLike, base: str | None = None) -> AdapterFile:
        """An adapter file's header (base, method, head).

        Raises:
            AdapterError: Not an adapter file, or one trained for another base than ``base``.
        """
        path = str(path)
        if not path or path == "." or os.path.isdir(path):
            raise AdapterError("choose an adapter file")
        ckpt = api.read_adapter(path)
        if base is not None and base != ckpt["base"]:
            raise AdapterError(
                f"adapter {os.path.basename(path)} was trained for '{ckpt['base']}', not for "
                f"'{base}': choose base '{ckpt['base']}' or another adapter"
            )
        config = AdapterConfig(**ckpt["config"])
        dims = base_dims(ckpt["base"])
        return AdapterFile(
            path, ckpt["base"], config.method, config.resolved_head(dims), dims,
            dict(ckpt.get("metrics") or {}), os.stat(path).st_mtime_ns,
        )  # fmt: skip

    # -- work (any thread) ------------------------------------------------------------------
    def train_adapter_iter(
        self,
        annotations: Sequence[Annotation],
        path: str | os.PathLike,
        base: str = "litemedsam",
        method: str = "spatial-adapter",
        steps: int | None = None,
        lr: float | None = None,
        where: str | None = None,
        head: str | None = None,
        time_limit: float | None | str = "default",
        **settings,
    ) -> Work[TrainedAdapter]:
        """Train an adapter on annotated volumes, then save it to ``path`` atomically.

        Yields the core's progress while caching, then one :class:`TrainStep` per step (its
        message names loss and validation Dice). Nothing is written when the run is cancelled
        or fails. The intensity window is :func:`training_window` of ``annotations``.

        Args:
            annotations: Training data (:meth:`read_annotation`).
            path: Adapter file to write.
            base: ``"litemedsam"`` (2D) or ``"hdbet"`` (3D).
            method: A method of :data:`fmseg.adapters.methods.METHODS` (``+`` combines).
            steps: Maximum training steps (None: the core's default).
            lr: Learning rate (None: the method's default).
            where: Part the PEFT methods act on (``"encoder"``, ``"decoder"``, ``"both"``;
                None: the first that fits, see :func:`fmseg.adapters.facade.allowed_wheres`).
            head: 2D head (None: the one that fits, see
                :func:`fmseg.adapters.facade.allowed_heads`).
            time_limit: Seconds of training (``"default"``: the core's default for this
                Logic's device, 60 s on CPU; None or 0: no limit).
            **settings: More :class:`TrainSettings` fields (``batch_size``, ``patch``, ...).

        Raises:
            MethodError: A ``where`` or ``head`` that does not fit the method (the message
                names those that do).
        """
        if not annotations:
            raise ValueError("add a segment to the training set first")
        if not str(path) or str(path) == "." or os.path.isdir(path):
            raise ValueError("choose where to save the adapter")
        config = resolve_config(base, method, where, head)
        if base_dims(base) == 3:  # one slicing axis; it means nothing for whole volumes
            axis = next((a.axis for a in annotations if a.slices is not None), 0)
            annotations = [
                dataclasses.replace(a, axis=axis) if a.slices is None else a for a in annotations
            ]
        work = api.train_adapter_iter(
            list(annotations), base, config,
            default_settings(method, steps, lr, time_limit, self.device, **settings),
            device=self.device, window=training_window(annotations), load=self.load,
        )  # fmt: skip
        try:
            while True:
                try:
                    step = next(work)
                except StopIteration as stop:
                    result = stop.value
                    break
                yield describe_step(step)
        finally:
            work.close()  # cancelled: stop the core's training generator too
        yield Progress(result.steps_run, result.steps_run, "saving the adapter")
        metrics = result.metrics()
        written = api.save_adapter(path, result.model, metrics)
        return TrainedAdapter(written, metrics, result.history)

    def apply_adapter_iter(self, volume, adapter: AdapterFile, axis: int = 0) -> Work[np.ndarray]:
        """Segment a whole volume with a prompt-free adapter; returns a ``(K, J, I)`` mask.

        Args:
            volume: The Logic's :class:`~FMSegLib.logic.VolumeInput`.
            adapter: The file's header (:meth:`read_adapter`).
            axis: Slicing axis of 2D adapters (the view's volume axis).

        Raises:
            ValueError: A box-head adapter (apply it with an ROI through the prompt path).
            AdapterError: The base weights differ from those the adapter was trained on.
        """
        if adapter.prompted:
            raise ValueError(
                "this adapter keeps the box-prompted decoder: place an ROI on a slice "
                "(or train a prompt-free method such as spatial-adapter)"
            )
        yield Progress(0, 1, f"loading {adapter.base} + adapter")
        model = api.load_adapter(adapter.path, adapter.base, device=self.device, load=self.load)
        prob = yield from apply_iter(model, volume.array, axis, spacing=volume.spacing)
        return np.asarray(prob) > THRESHOLD
