"""The **Adapt** dock widget: few-shot adapter training on annotated slices, then apply.

The clinician labels a structure on a few slices (or whole volumes), picks the image/labels
pairs, a base model (LiteMedSAM in 2D, HD-BET in 3D) and an adaptation method of
:data:`fmseg.adapters.methods.METHODS`, and presses Start: training runs in a worker
(:mod:`._worker`) and feeds a live plot of loss and validation Dice; the plot and the pure
layer-to-training-data helpers live in :mod:`._adapter_plot`.
The adapter is saved to / loaded from a small file (:mod:`fmseg.adapters.api`, atomic writes)
and applied to the chosen image in a worker (:class:`~._worker.JobRunner`); the result goes
into the "fmseg adapter" Labels layer (:class:`~._output.OutputLayer`, undoable), never into
the annotations.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from napari.layers import Image, Shapes
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QAbstractSpinBox, QListWidget

from fmseg.adapters import api, facade
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.methods import METHODS
from fmseg.adapters.trainer import TrainSettings, TrainStep
from fmseg.progress import Progress, Work
from fmseg.registry import REGISTRY, ModelLoader, load_model

from . import _layers as L
from ._adapter_plot import Pair, TrainingPlot, apply_plan, boxes_from_shapes, describe_adapter
from ._controls import (
    StatusLine,
    annotations_box,
    button_row,
    layer_box,
    offer_choices,
    on_layers_changed,
    qt_panel,
)
from ._dialogs import ask_then
from ._output import OutputLayer, Write
from ._worker import JobRunner, call_work, then

if TYPE_CHECKING:
    import napari

    from fmseg.adapters.bases import AdaptedModel
    from fmseg.adapters.trainer import AdaptResult

OUTPUT_LAYER = L.ADAPTER_LAYER
ANNOTATED = (("labelled slices only", False), ("whole volume", True))
_ROWS = (
    (("Add pair to list", "add_pair"), ("Remove selected", "remove_selected")),
    (("Start training", "start"), ("Cancel", "cancel")),
    (("Save adapter...", "save_dialog"), ("Load adapter...", "load_dialog")),
    (("Apply to slice", "apply_slice"), ("Apply to volume", "apply_volume"), ("Undo", "undo")),
)


class AdapterWidget(mw.Container):
    """Train a few-shot adapter on annotated layers, save/load it, apply it to an image.

    Args:
        viewer: The napari viewer (npe2 passes it).
        load: How base networks are built (None: :func:`fmseg.registry.load_model`, the real
            weights; :func:`fmseg.registry.load_tiny` in tests and demos without weights).
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, load: ModelLoader | None = None) -> None:
        super().__init__()
        self._viewer = viewer
        self.load = load or load_model  # public: the dock and tests read it
        self.pairs: list[Pair] = []  # public: tests read them
        self.adapter: AdaptedModel | None = None
        self.metrics: dict = {}
        self.history: list[dict] = []
        self.status = StatusLine("Label a few slices, then press Start training.")
        self.jobs = JobRunner(self.status)
        self.output = OutputLayer(viewer, OUTPUT_LAYER, self.status)
        self._build()

    def _build(self) -> None:
        viewer = self._viewer
        self._image = layer_box(viewer, "image", Image, exclude=L.UNCERTAINTY_IMAGES)
        self._annotations = annotations_box(viewer, exclude=(OUTPUT_LAYER,))
        self._label = mw.SpinBox(label="label value", min=1, max=65535, value=1)
        self._axis = mw.ComboBox(label="slicing axis", choices=L.AXES, value=0)
        self._whole = mw.ComboBox(label="annotated", choices=ANNOTATED, value=False)
        self._whole.tooltip = "labelled slices only: slices without any label are unknown"
        self.pair_list = QListWidget()  # public: tests read it
        self.pair_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.pair_list.setMaximumHeight(60)
        self.pair_list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.pair_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.pair_list.setToolTip("empty: train on the image and annotations chosen above")
        bases = list(facade.adapter_bases())
        self._base = mw.ComboBox(label="base model", choices=bases, value="litemedsam")
        self._base.tooltip = "\n".join(f"{n}: {REGISTRY[n].description}" for n in bases)
        self._method = mw.ComboBox(label="method", choices=list(METHODS), value="spatial-adapter")
        self._method.tooltip = "\n".join(f"{k}: {v}" for k, v in METHODS.items())
        for i, text in enumerate(METHODS.values()):
            self._method.native.setItemData(i, text, Qt.ItemDataRole.ToolTipRole)
        self._where = mw.ComboBox(label="PEFT on", choices=facade.WHERES)
        self._head = mw.ComboBox(label="head (2D)", choices=facade.HEADS)
        self._head.tooltip = (
            "auto: prompt-free head on the image embedding; box: the box-prompted decoder "
            "(apply then needs a rectangle per slice in the 'boxes' Shapes layer)"
        )
        self._steps = mw.SpinBox(label="steps", min=1, max=100_000, value=TrainSettings.steps)
        limit = facade.default_time_limit() or 0  # the core's rule: 60 s on CPU, none on GPU
        self._time_limit = mw.FloatSpinBox(label="time limit (s)", max=86_400, step=10, value=limit)
        self._time_limit.tooltip = "stop after this many seconds, keep the best state (0: none)"
        self._lr = mw.FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-6)
        self._lr.native.setStepType(QAbstractSpinBox.StepType.AdaptiveDecimalStepType)
        self.plot = TrainingPlot()  # public: tests read its points
        self.info = mw.Label(value="No adapter yet.")  # public: the adapter's summary
        self.info.native.setWordWrap(True)
        self._boxes = layer_box(viewer, "boxes", Shapes, nullable=True)
        self._boxes.tooltip = "Shapes layer with a rectangle per slice (for box-head adapters)"
        rows = [button_row(self, row) for row in _ROWS]
        self.extend(
            [self._image, self._annotations, self._label, self._axis, self._whole, rows[0]]
            + [qt_panel("training list", self.pair_list), self._base, self._method]
            + [self._where, self._head, self._steps, self._time_limit, self._lr, rows[1]]
            + [self.jobs.bar]
            + [qt_panel("", self.plot), self.info, rows[2], self._boxes, rows[3], self.status]
        )
        self._method.changed.connect(self._on_method)
        for combo in (self._base, self._where):
            combo.changed.connect(self._fit_choices)
        self._on_method()
        on_layers_changed(viewer, self, self._on_layers_changed)

    def _on_layers_changed(self, event: Any) -> None:
        if event.type == "removed":
            gone = event.value
            self.pairs = [p for p in self.pairs if gone not in (p.image, p.labels)]
            self._refresh_list()

    def _on_method(self, *_: Any) -> None:
        """The method's default learning rate, then the choices that fit it."""
        self._lr.value = facade.default_settings(str(self._method.value)).lr
        self._fit_choices()

    def _fit_choices(self, *_: Any) -> None:
        """Offer only the parts and heads the core accepts for this base and method.

        The core decides (:mod:`fmseg.adapters.facade`): e.g. PEFT on the decoder or on both
        parts needs the box head, which the prompt-free head would never use.
        """
        base, method = str(self._base.value), str(self._method.value)
        offer_choices(self._where, facade.allowed_wheres(base, method))
        offer_choices(self._head, facade.allowed_heads(base, method, str(self._where.value)))

    @property
    def busy(self) -> bool:
        """True while training, loading or applying runs (or, cancelled, ends its step)."""
        return self.jobs.busy

    def current_slice(self) -> int:
        """Index along the slicing axis of the slice the viewer shows (of the chosen image)."""
        return L.slice_at(self._image.value, self._viewer.dims.point, self._axis.value)

    # --- training data ---------------------------------------------------------------------

    def current_pair(self) -> Pair | None:
        """The image/annotations pair chosen above, checked (None after saying why)."""
        image, labels = self._image.value, self._annotations.value
        if image is None or labels is None:
            self.status.error("choose an image and a Labels layer with the annotated slices")
            return None
        pair = Pair(image, labels, int(self._label.value), int(self._axis.value), self._whole.value)
        if problem := pair.problem():
            self.status.error(problem)
            return None
        return pair

    def add_pair(self) -> bool:
        """Add the chosen image/annotations pair to the training list."""
        if (pair := self.current_pair()) is None:
            return False
        self.pairs = [p for p in self.pairs if (p.image, p.labels) != (pair.image, pair.labels)]
        self.pairs.append(pair)
        self._refresh_list()
        self.status.say(f"{len(self.pairs)} image(s) in the training list.")
        return True

    def remove_selected(self) -> None:
        """Remove the pairs selected in the training list."""
        rows = {i.row() for i in self.pair_list.selectedIndexes()}
        if not rows:
            self.status.error("select pairs in the training list first")
            return
        self.pairs = [p for i, p in enumerate(self.pairs) if i not in rows]
        self._refresh_list()
        self.status.say(f"Removed {len(rows)}: {len(self.pairs)} image(s) in the training list.")

    def _refresh_list(self) -> None:
        self.pair_list.clear()
        self.pair_list.addItems([p.describe() for p in self.pairs])
        for i, pair in enumerate(self.pairs):
            self.pair_list.item(i).setToolTip(pair.describe())

    def _training_pairs(self) -> list[Pair] | None:
        if not self.pairs:
            pair = self.current_pair()
            return None if pair is None else [pair]
        for pair in self.pairs:
            if problem := pair.problem():
                self.status.error(problem)
                return None
        volumetric = facade.base_dims(str(self._base.value)) == 3
        if volumetric and len({p.axis for p in self.pairs}) > 1:
            self.status.error("a 3D base needs every pair annotated along the same slicing axis")
            return None
        return self.pairs

    # --- training ----------------------------------------------------------------------------

    def settings(self) -> TrainSettings:
        """Training settings from the controls (the core's rules for the rest)."""
        method = str(self._method.value)
        steps, lr, limit = int(self._steps.value), float(self._lr.value), self._time_limit.value
        return facade.default_settings(method, steps, lr, time_limit=float(limit) or None)

    def config(self) -> AdapterConfig:
        """The adapter configuration from the controls, checked by the core."""
        return facade.resolve_config(
            str(self._base.value), str(self._method.value), str(self._where.value),
            str(self._head.value),
        )  # fmt: skip

    def start(self) -> None:
        """Train an adapter on the training list (or the chosen pair) in a worker.

        The intensity window is the first training image's contrast limits (what the clinician
        sees, the rule of every fmseg tool: :func:`._layers.contrast_window`); the adapter
        file keeps it, and applying uses it.
        """
        if not self.jobs.idle() or (pairs := self._training_pairs()) is None:
            return
        base, config, settings = str(self._base.value), self.config(), self.settings()
        load, window = self.load, L.contrast_window(pairs[0].image)

        def work() -> Work[AdaptResult]:  # in the worker: copying the labels takes a while
            annotations = [p.annotation() for p in pairs]
            return (
                yield from api.train_adapter_iter(
                    annotations, base, config, settings, window=window, load=load
                )
            )

        self.plot.reset(settings.steps)
        self.status.say(f"training {self._method.value} on {base}: loading the model ...")
        self.jobs.run(work(), "training", self._on_trained, on_progress=self._on_train_step)

    def _on_train_step(self, step: Progress) -> None:
        if not isinstance(step, TrainStep):
            self.status.say(f"training: {step.message}")
            return
        self.plot.add(step.done, step.loss, step.val_dice)
        self.status.say(f"training: {step.describe()}")

    def _on_trained(self, result: AdaptResult) -> None:
        self.adapter, self.history, self.metrics = result.model, result.history, result.metrics()
        self._show_adapter()
        why = f", stopped by the {result.stopped}" if result.stopped else ""
        self.status.say(
            f"Trained in {result.wall_s:.1f} s ({result.steps_run} steps{why}): Save adapter, or "
            "apply it to an image."
        )

    def _show_adapter(self) -> None:
        self.info.value = describe_adapter(self.adapter, self.metrics)

    def cancel(self) -> None:
        """Stop the running work at its next step; the adapter and layers stay unchanged."""
        self.jobs.cancel()

    def undo(self) -> None:
        """Restore the output layer as it was before the last apply."""
        if self.jobs.idle():
            self.output.undo()

    # --- adapter files -----------------------------------------------------------------------

    def save_adapter(self, path: str) -> bool:
        """Write the adapter to ``path`` (atomically: a cancelled or failed write leaves none)."""
        if not self.jobs.idle():
            return False
        if self.adapter is None:
            return self.status.error("no adapter to save: train or load one first")
        try:
            written = api.save_adapter(path, self.adapter, self.metrics)
        except OSError as exc:
            return self.status.error(f"could not save the adapter: {exc}")
        self.status.say(f"Saved the adapter to {written}.")
        return True

    def load_adapter(self, path: str) -> None:
        """Load an adapter file for the chosen base model (in a worker; refused if it differs)."""
        if not self.jobs.idle():
            return
        base = str(self._base.value)
        work = call_work(
            lambda: api.load_adapter(path, base=base, load=self.load), f"loading {path}"
        )
        self.jobs.run(work, "loading the adapter", lambda model: self._on_loaded(model, path))

    def _on_loaded(self, model: AdaptedModel, path: str) -> None:
        self.adapter, self.history = model, []
        self.metrics = dict(model.metrics)
        self.plot.reset(1)
        self._show_adapter()
        self.status.say(f"Loaded the adapter from {path}.")

    def save_dialog(self) -> None:
        """Ask for a file name, then :meth:`save_adapter`."""
        ask_then(self.native, "Save adapter", "*.pt", self.save_adapter, save=True)

    def load_dialog(self) -> None:
        """Ask for an adapter file, then :meth:`load_adapter`."""
        ask_then(self.native, "Load adapter", "*.pt", self.load_adapter)

    # --- applying ----------------------------------------------------------------------------

    def apply_slice(self) -> None:
        """Segment the current slice of the chosen image with the adapter (in a worker)."""
        self._apply(whole=False)

    def apply_volume(self) -> None:
        """Segment the whole chosen image with the adapter (in a worker)."""
        self._apply(whole=True)

    def _apply(self, whole: bool) -> None:
        if not self.jobs.idle() or (image := self._apply_image()) is None:
            return
        axis = int(self._axis.value) if image.ndim == 3 else 0
        index = self.current_slice() if image.ndim == 3 else 0
        slices, boxes = (None if whole else [index]), None
        if self.adapter.head_kind == "box":
            if (boxes := self._boxes_for(image, axis, slices)) is None:
                return
            slices = sorted(boxes)
        volume = np.asarray(image.data)
        volume = volume[None] if image.ndim == 2 else volume
        n = volume.shape[axis]
        done = np.zeros(n, bool)
        done[list(range(n)) if slices is None else slices] = True
        scale = tuple(float(s) for s in image.scale)
        spacing = ((1.0,) * (3 - len(scale)) + scale)[-3:]
        plan = functools.partial(
            apply_plan, self.output.target(), axis, done, int(self._label.value), image.ndim
        )
        applying = facade.apply_iter(self.adapter, volume, axis, slices, boxes, spacing)
        work = then(applying, plan, f"writing into '{OUTPUT_LAYER}'")
        name = "apply to volume" if whole else f"apply to slice {index}"
        self.status.say(f"{name} ...")
        self.jobs.run(work, name, functools.partial(self._on_applied, image, name))

    def _apply_image(self) -> Image | None:
        image = self._image.value
        if self.adapter is None:
            self.status.error("no adapter: train one, or load an adapter file")
        elif image is None:
            self.status.error("choose the image to apply the adapter to")
        elif image.rgb or image.ndim not in (2, 3):
            self.status.error(f"'{image.name}' is not a 2D or 3D single-channel image")
        elif problem := self.output.problem(image):
            self.status.error(problem)
        else:
            return image
        return None

    def _boxes_for(self, image: Image, axis: int, slices: list[int] | None) -> dict | None:
        shapes = self._boxes.value
        found = {} if shapes is None else boxes_from_shapes(shapes, image, axis, slices)
        if not found:
            where = "the current slice" if slices else "any slice"
            self.status.error(
                f"this adapter uses box prompts: draw a rectangle on {where} in a Shapes layer "
                "and choose it under 'boxes' (or train with head 'auto')"
            )
            return None
        return found

    def _on_applied(self, image: Image, name: str, out: tuple[Write, int, int]) -> None:
        """Copy the planned write into the output layer, undoably (GUI thread)."""
        write, voxels, size = out
        if image not in self._viewer.layers or size != image.data.size:
            self.status.error("the image changed while applying the adapter: result dropped")
            return
        n = self.output.apply(write, image)
        value = int(write.values[0])
        self.status.say(
            f"{name}: {voxels} voxels of label {value}; {n} voxels of "
            f"'{OUTPUT_LAYER}' changed" + (" (Undo reverts)." if n else ".")
        )
