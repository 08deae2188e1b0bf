"""The **Adapt** dock widget: few-shot adapter training on annotated slices, then apply.

The clinician labels a structure on a few slices (or whole volumes), picks the image/labels
pairs, a base model (LiteMedSAM in 2D, HD-BET in 3D) and an adaptation method of
:data:`fmseg.adapters.methods.METHODS`, and presses Start: training runs in a worker
(:mod:`._worker`) and feeds a live plot of loss and validation Dice; the plot and the pure
layer-to-training-data helpers live in :mod:`._adapter_plot`.
The adapter is saved to / loaded from a small file (:mod:`fmseg.adapters.api`, atomic writes)
and applied to the chosen image in a worker; the result goes into the "fmseg adapter" Labels
layer with the In-context widget's undo, never into the annotations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from napari.layers import Image, Labels, Shapes
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QAbstractSpinBox, QListWidget

from fmseg.adapters import api, facade
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.methods import METHODS
from fmseg.adapters.trainer import TrainSettings, TrainStep
from fmseg.progress import Progress, Work
from fmseg.registry import REGISTRY

from . import _layers as L
from ._adapter_plot import Pair, TrainingPlot, boxes_from_shapes, describe_adapter
from ._dialogs import ask_path
from ._incontext_widget import AXES, InContextWidget, Region
from ._status import StatusContainer
from ._worker import call_work, run_work

if TYPE_CHECKING:
    import napari

    from fmseg.adapters.bases import AdaptedModel
    from fmseg.adapters.trainer import AdaptResult

OUTPUT_LAYER = "fmseg adapter"
ANNOTATED = (("labelled slices only", False), ("whole volume", True))
_ROWS = (
    (("Add pair to list", "add_pair"), ("Remove selected", "remove_selected")),
    (("Start training", "start"), ("Cancel", "cancel")),
    (("Save adapter...", "save_dialog"), ("Load adapter...", "load_dialog")),
    (("Apply to slice", "apply_slice"), ("Apply to volume", "apply_volume"), ("Undo", "undo")),
)


class AdapterWidget(StatusContainer):
    """Train a few-shot adapter on annotated layers, save/load it, apply it to an image.

    Args:
        viewer: The napari viewer (npe2 passes it).
        tiny: Use tiny random-weight base models (tests and demos without weights).
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, tiny: bool = False) -> None:
        super().__init__()
        self._viewer = viewer
        self._tiny = tiny
        self.pairs: list[Pair] = []  # public: tests read them
        self.adapter: AdaptedModel | None = None
        self.metrics: dict = {}
        self.history: list[dict] = []
        self._job: Any = None
        self._job_name = ""
        self._undo: list[tuple[Labels, Region, np.ndarray]] = []
        self._build()

    # Shared with the In-context widget: undoable writes (same ``_undo`` records), the slice shown.
    _write = InContextWidget._write
    undo = InContextWidget.undo
    current_slice = InContextWidget.current_slice

    def _build(self) -> None:
        self._image = mw.ComboBox(label="image", choices=functools.partial(self._choices, Image))
        self._labels = mw.ComboBox(
            label="annotations", choices=functools.partial(self._choices, Labels)
        )
        self._label = mw.SpinBox(label="label value", min=1, max=65535, value=1)
        self._axis = mw.ComboBox(label="slicing axis", choices=AXES, value=0)
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
        self._lr = mw.FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-6)
        self._lr.native.setStepType(QAbstractSpinBox.StepType.AdaptiveDecimalStepType)
        self._bar = mw.ProgressBar(label="progress", visible=False)
        self.plot = TrainingPlot()  # public: tests read its points
        self.info = mw.Label(value="No adapter yet.")  # public: the adapter's summary
        self._boxes = mw.ComboBox(
            label="boxes", choices=functools.partial(self._choices, Shapes), nullable=True
        )
        self._boxes.tooltip = "Shapes layer with a rectangle per slice (for box-head adapters)"
        self.status = mw.Label(value="Label a few slices, then press Start training.")
        for label in (self.info, self.status):
            label.native.setWordWrap(True)
        rows = [self._row(r) for r in _ROWS]
        self.extend(
            [self._image, self._labels, self._label, self._axis, self._whole, rows[0]]
            + [self._panel("training list", self.pair_list), self._base, self._method]
            + [self._where, self._head, self._steps, self._lr, rows[1], self._bar]
            + [self._panel("", self.plot), self.info, rows[2], self._boxes, rows[3], self.status]
        )
        self._method.changed.connect(self._on_method)
        for combo in (self._base, self._where):
            combo.changed.connect(self._fit_choices)
        self._on_method()
        for event in (self._viewer.layers.events.inserted, self._viewer.layers.events.removed):
            event.connect(self._on_layers_changed)

    def _row(self, row: tuple[tuple[str, str], ...]) -> mw.Container:
        buttons = [mw.PushButton(text=text) for text, _ in row]
        for button, (_, method) in zip(buttons, row, strict=True):
            button.changed.connect(lambda *_, m=method: getattr(self, m)())
        return mw.Container(widgets=buttons, layout="horizontal", labels=False)

    @staticmethod
    def _panel(label: str, widget: Any) -> mw.Container:
        panel = mw.Container(label=label, labels=False)
        panel.native.layout().setContentsMargins(0, 0, 0, 0)
        panel.native.layout().addWidget(widget)
        return panel

    def _choices(self, kind: type, _widget: Any = None) -> list[tuple[str, Any]]:
        """Layers of ``kind`` for a combo box (never the output layer)."""
        layers = self._viewer.layers
        return [(x.name, x) for x in layers if isinstance(x, kind) and x.name != OUTPUT_LAYER]

    def _on_layers_changed(self, event: Any) -> None:
        for combo in (self._image, self._labels, self._boxes):
            combo.reset_choices()
        if event.type == "removed":
            gone = event.value
            self.pairs = [p for p in self.pairs if gone not in (p.image, p.labels)]
            self._undo = [u for u in self._undo if u[0] is not gone]
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
        _offer(self._where, facade.allowed_wheres(base, method))
        _offer(self._head, facade.allowed_heads(base, method, str(self._where.value)))

    @property
    def busy(self) -> bool:
        """True while training, loading or applying runs (or, cancelled, ends its step)."""
        return self._job is not None

    def _idle(self) -> bool:
        if self._job is not None:
            return self._error(f"{self._job_name} is still running: wait for it, or press Cancel")
        return True

    # --- training data ---------------------------------------------------------------------

    def current_pair(self) -> Pair | None:
        """The image/annotations pair chosen above, checked (None after saying why)."""
        image, labels = self._image.value, self._labels.value
        if image is None or labels is None:
            self._error("choose an image and a Labels layer with the annotated slices")
            return None
        pair = Pair(image, labels, int(self._label.value), int(self._axis.value), self._whole.value)
        if problem := pair.problem():
            self._error(problem)
            return None
        return pair

    def add_pair(self) -> bool:
        """Add the chosen image/annotations pair to the training list."""
        if (pair := self.current_pair()) is None:
            return False
        self.pairs = [p for p in self.pairs if (p.image, p.labels) != (pair.image, pair.labels)]
        self.pairs.append(pair)
        self._refresh_list()
        self._say(f"{len(self.pairs)} image(s) in the training list.")
        return True

    def remove_selected(self) -> None:
        """Remove the pairs selected in the training list."""
        rows = {i.row() for i in self.pair_list.selectedIndexes()}
        if not rows:
            self._error("select pairs in the training list first")
            return
        self.pairs = [p for i, p in enumerate(self.pairs) if i not in rows]
        self._refresh_list()
        self._say(f"Removed {len(rows)}: {len(self.pairs)} image(s) in the training list.")

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
                self._error(problem)
                return None
        volumetric = facade.base_dims(str(self._base.value)) == 3
        if volumetric and len({p.axis for p in self.pairs}) > 1:
            self._error("a 3D base needs every pair annotated along the same slicing axis")
            return None
        return self.pairs

    # --- training ----------------------------------------------------------------------------

    def settings(self) -> TrainSettings:
        """Training settings from the controls (the core's rules for the rest)."""
        method = str(self._method.value)
        return facade.default_settings(method, int(self._steps.value), float(self._lr.value))

    def config(self) -> AdapterConfig:
        """The adapter configuration from the controls, checked by the core."""
        return facade.resolve_config(
            str(self._base.value), str(self._method.value), str(self._where.value),
            str(self._head.value),
        )  # fmt: skip

    def start(self) -> None:
        """Train an adapter on the training list (or the chosen pair) in a worker."""
        if not self._idle() or (pairs := self._training_pairs()) is None:
            return
        base, settings = str(self._base.value), self.settings()
        work = api.train_adapter_iter(
            [p.annotation() for p in pairs], base, self.config(), settings, tiny=self._tiny
        )
        self.plot.reset(settings.steps)
        self._say(f"training {self._method.value} on {base}: loading the model ...")
        self._launch(work, "training", self._on_trained, self._on_train_step)

    def _on_train_step(self, step: Progress) -> None:
        if not isinstance(step, TrainStep):
            self._say(f"training: {step.message}")
            return
        self.plot.add(step.done, step.loss, step.val_dice)
        dice = "" if step.val_dice is None else f", validation Dice {step.val_dice:.3f}"
        self._say(f"training: step {step.done}/{step.total}, loss {step.loss:.3f}{dice}")

    def _on_trained(self, result: AdaptResult) -> None:
        self.adapter, self.history, self.metrics = result.model, result.history, result.metrics()
        self._show_adapter()
        self._say(f"Trained in {result.wall_s:.1f} s: Save adapter, or apply it to an image.")

    def _show_adapter(self) -> None:
        self.info.value = describe_adapter(self.adapter, self.metrics)

    def _launch(
        self,
        work: Work,
        name: str,
        on_done: Callable[[Any], None],
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        worker = run_work(
            work,
            on_done=on_done,
            on_error=lambda exc: self._error(f"{name} failed: {exc}"),
            on_progress=on_progress or (lambda step: self._say(f"{name}: {step.message}")),
            on_cancelled=lambda: self._say(f"{name} cancelled: nothing was changed."),
            progress_bar=self._bar,
            start=False,
        )
        worker.finished.connect(lambda: setattr(self, "_job", None))  # one job at a time
        self._job, self._job_name = worker, name
        worker.start()

    def cancel(self) -> None:
        """Stop the running work at its next step; the adapter and layers stay unchanged."""
        if self._job is None:
            self._say("Nothing to cancel.")
            return
        self._job.quit()
        self._say("Cancelling ...")

    # --- adapter files -----------------------------------------------------------------------

    def save_adapter(self, path: str) -> bool:
        """Write the adapter to ``path`` (atomically: a cancelled or failed write leaves none)."""
        if not self._idle():
            return False
        if self.adapter is None:
            return self._error("no adapter to save: train or load one first")
        try:
            written = api.save_adapter(path, self.adapter, self.metrics)
        except OSError as exc:
            return self._error(f"could not save the adapter: {exc}")
        self._say(f"Saved the adapter to {written}.")
        return True

    def load_adapter(self, path: str) -> None:
        """Load an adapter file for the chosen base model (in a worker; refused if it differs)."""
        if not self._idle():
            return
        base = str(self._base.value)
        work = call_work(
            lambda: api.load_adapter(path, base=base, tiny=self._tiny), f"loading {path}"
        )
        self._launch(work, "loading the adapter", lambda model: self._on_loaded(model, path))

    def _on_loaded(self, model: AdaptedModel, path: str) -> None:
        self.adapter, self.history = model, []
        self.metrics = dict(model.metrics)
        self.plot.reset(1)
        self._show_adapter()
        self._say(f"Loaded the adapter from {path}.")

    def save_dialog(self) -> None:
        """Ask for a file name, then :meth:`save_adapter`."""
        if path := ask_path(self.native, "Save adapter", "*.pt", save=True):
            self.save_adapter(path)

    def load_dialog(self) -> None:
        """Ask for an adapter file, then :meth:`load_adapter`."""
        if path := ask_path(self.native, "Load adapter", "*.pt"):
            self.load_adapter(path)

    # --- applying ----------------------------------------------------------------------------

    def apply_slice(self) -> None:
        """Segment the current slice of the chosen image with the adapter (in a worker)."""
        self._apply(whole=False)

    def apply_volume(self) -> None:
        """Segment the whole chosen image with the adapter (in a worker)."""
        self._apply(whole=True)

    def _apply(self, whole: bool) -> None:
        if not self._idle() or (image := self._apply_image()) is None:
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
        work = facade.apply_iter(self.adapter, volume, axis, slices, boxes, spacing)
        name = "apply to volume" if whole else f"apply to slice {index}"
        self._say(f"{name} ...")
        self._launch(work, name, lambda prob: self._on_applied(image, axis, done, prob))

    def _apply_image(self) -> Image | None:
        image = self._image.value
        if self.adapter is None:
            self._error("no adapter: train one, or load an adapter file")
        elif image is None:
            self._error("choose the image to apply the adapter to")
        elif image.rgb or image.ndim not in (2, 3):
            self._error(f"'{image.name}' is not a 2D or 3D single-channel image")
        elif (out := self._output_layer()) is not None and out.data.shape != image.data.shape:
            self._error(f"'{OUTPUT_LAYER}' has another shape than '{image.name}': rename it")
        else:
            return image
        return None

    def _boxes_for(self, image: Image, axis: int, slices: list[int] | None) -> dict | None:
        shapes = self._boxes.value
        found = {} if shapes is None else boxes_from_shapes(shapes, image, axis, slices)
        if not found:
            where = "the current slice" if slices else "any slice"
            self._error(
                f"this adapter uses box prompts: draw a rectangle on {where} in a Shapes layer "
                "and choose it under 'boxes' (or train with head 'auto')"
            )
            return None
        return found

    def _output_layer(self) -> Labels | None:
        layers = self._viewer.layers
        return next((x for x in layers if x.name == OUTPUT_LAYER and isinstance(x, Labels)), None)

    def _on_applied(self, image: Image, axis: int, done: np.ndarray, prob: np.ndarray) -> None:
        """Write the label on the slices run into the output layer, undoably (GUI thread)."""
        if image not in self._viewer.layers or prob.size != image.data.size:
            self._error("the image changed while applying the adapter: result dropped")
            return
        if (layer := self._output_layer()) is None:
            kwargs = {**L.geometry(image), "metadata": L.labels_metadata(image.metadata)}
            zeros = np.zeros(image.data.shape, np.int32)
            layer = self._viewer.add_labels(zeros, name=OUTPUT_LAYER, opacity=0.5, **kwargs)
        value, run = int(self._label.value), np.flatnonzero(done)
        region = [slice(0, n) for n in prob.shape]  # explicit starts: the undo box needs them
        region[axis] = slice(int(run[0]), int(run[-1]) + 1)
        on = done[region[axis]].reshape([-1 if a == axis else 1 for a in range(3)])
        old = np.asarray(layer.data).reshape(prob.shape)[tuple(region)] == value
        mask = np.where(on, prob[tuple(region)] > facade.THRESHOLD, old)
        box = tuple(region)[3 - image.ndim :]
        new = (mask * value).astype(np.int32).reshape(layer.data[box].shape)
        n = self._write(layer, box, new, [value])
        self._say(
            f"{self._job_name}: {int(mask.sum())} voxels of label {value}; {n} voxels of "
            f"'{OUTPUT_LAYER}' changed" + (" (Undo reverts)." if n else ".")
        )


def _offer(combo: mw.ComboBox, allowed: Sequence[str]) -> None:
    """Let ``combo`` choose among ``allowed`` only (in that order), disabled without a choice.

    Keeps the current value when allowed, else takes the first (the core's default). Signals
    stay blocked: the caller fits the dependent choices itself, in order.
    """
    value = combo.value if combo.value in allowed else allowed[0]
    with combo.changed.blocked():
        if tuple(combo.choices) != tuple(allowed):
            combo.native.clear()  # magicgui appends new choices: rebuild to keep the order
            combo.choices = tuple(allowed)
        combo.value = value
    combo.enabled = len(allowed) > 1
