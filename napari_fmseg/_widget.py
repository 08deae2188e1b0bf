"""The **Segment** tool: prompt a foundation model slice by slice, propagate, commit.

A thin widget: clicks ("fmseg prompts"), boxes ("fmseg box"), scribbles and lassos ("fmseg
scribbles": freehand paths and polygons) are napari layers that :mod:`._layers` turns into
prompts; an :class:`fmseg.Session` does the work, every model call (and every commit, undo or
redo) in a worker: one :class:`~._worker.JobRunner` for the foreground work and one for the
background encoding. "fmseg object" shows the working object, "fmseg labels" the committed
labels (the session's array, in an :class:`~._output.OutputLayer` with the image's metadata for
the fmseg writer; the session keeps the undo steps, :mod:`._history` shows them).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from napari.layers import Image, Labels

from fmseg.device import describe
from fmseg.interactive.prompts import Prompts
from fmseg.interactive.session import Session
from fmseg.progress import Progress, Work
from fmseg.registry import REGISTRY, ModelLoader, load_model

from . import _layers as L
from ._controls import StatusLine, button_row, layer_box, on_layers_changed
from ._history import history_message, show_prompts
from ._output import OutputLayer
from ._prefetch import Prefetch
from ._worker import JobRunner, call_work

if TYPE_CHECKING:
    import napari

#: Keyboard shortcuts (napari key names), what they do, and the widget method they call. They
#: avoid the keys napari's Points, Shapes, Labels and Image layers already use.
SHORTCUTS = (
    ("N", "toggle negative (background) clicks", "toggle_negative"),
    ("Shift-C", "commit the object as the label value", "commit"),
    ("Shift-U", "undo the last interaction", "undo"),
    ("Control-Z", "undo the last interaction (prompt, propagation, commit)", "undo"),
    ("Control-Shift-Z", "redo", "redo"),
    ("Shift-E", "edit the label value of the 'edit from' layer", "start_from_layer"),
    ("Shift-G", "propagate the object through the volume", "propagate"),
    ("Shift-X", "clear all prompts and the object", "clear"),
    ("Shift-Escape", "cancel running work", "cancel"),
)
HELP = "Shortcuts (canvas focused):\n" + "\n".join(f"  {k}: {d}" for k, d, _ in SHORTCUTS)
_BUTTONS = (
    (("Propagate", "propagate"), ("Commit", "commit"), ("Undo", "undo"), ("Redo", "redo")),
    (("Edit label", "start_from_layer"), ("Clear prompts", "clear"), ("Cancel", "cancel")),
)
_REFRESH_S = 0.3  # redraw the object at most this often while propagating
#: Prompt tools: the layer each draws on and its napari mode (a scribble is a freehand path).
_TOOL_MODES = {
    "box": ("box", "add_rectangle"),
    "click": ("points", "add"),
    "scribble": ("scribbles", "add_path"),
    "lasso": ("scribbles", "add_polygon_lasso"),
}


def _apply_prompts(
    session: Session, wanted: Mapping[int, Prompts], todo: list[int]
) -> dict[int, np.ndarray]:
    """Re-segment (or clear) slices along axis 0 from their prompts; returns their masks."""
    for i in todo:
        if i in wanted:
            session.set_prompts(0, i, wanted[i])  # embeds the slice first if needed
        else:
            session.clear_prompts(0, i)
    return {i: np.take(session.mask, i, axis=0).copy() for i in todo}


class SegmentWidget(mw.Container):
    """Interactive foundation-model segmentation of the chosen image layer.

    Args:
        viewer: The napari viewer (npe2 passes it).
        load: How networks are built (None: :func:`fmseg.registry.load_model`, the real
            weights; :func:`fmseg.registry.load_tiny` in tests and demos without weights).
        session_factory: Builds the session, ``factory(volume, spacing=..., model=...,
            point_model=..., window=...)``; defaults to :meth:`fmseg.Session.from_registry`
            with ``load``.
            The window is the image layer's contrast limits (:func:`._layers.contrast_window`).
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        load: ModelLoader | None = None,
        session_factory: Callable[..., Session] | None = None,
    ) -> None:
        super().__init__()
        self._viewer = viewer
        self.load = load or load_model  # public: the dock and tests read it
        self._factory = session_factory or functools.partial(Session.from_registry, load=self.load)
        self.session: Session | None = None
        self.image_layer: Image | None = None
        self.layers: dict[str, Any] = {}
        self.status = StatusLine("Choose an image and press Start.")  # public: tests read it
        self.jobs = JobRunner(self.status)  # foreground: one model call at a time
        self.embedding = JobRunner(self.status, "embedded")  # background encoding
        self.prefetch = Prefetch(viewer, self.embedding, self.current_slice)
        self.labels_out = OutputLayer(viewer, L.LABELS_LAYER, self.status, opacity=0.45)
        self._sync_pending = False
        self._muted = False
        self._last_refresh = 0.0
        self._build()
        self._bind_keys()

    def _build(self) -> None:
        self._image = layer_box(self._viewer, "image", Image)
        usable = [n for n, spec in REGISTRY.items() if spec.weights is not None]
        self._model = mw.ComboBox(label="model", choices=usable, value="litemedsam")
        self._start = mw.PushButton(text="Start")
        self._tool = mw.RadioButtons(
            label="prompt", choices=list(_TOOL_MODES), value="box", orientation="horizontal"
        )
        self._negative = mw.CheckBox(text="negative click (N)")
        self._label = mw.SpinBox(label="label value", min=1, max=65535, value=1)
        self._overwrite = mw.CheckBox(text="overwrite existing labels")
        self._source = layer_box(self._viewer, "edit from", Labels)  # "Edit label" reads it
        keys = {m: k for k, _, m in SHORTCUTS}
        tips = {m: f"{t} ({keys[m]})" for row in _BUTTONS for t, m in row}
        button_rows = [button_row(self, row, tips) for row in _BUTTONS]
        self.extend(
            [self._image, self._model, self._start, self._tool]
            + [self._negative, self._label, self._overwrite, self._source, *button_rows]
            + [self.embedding.bar, self.jobs.bar, self.status]
        )
        self.tooltip = HELP
        self._start.changed.connect(self.start)
        self._tool.changed.connect(self._apply_tool)
        self._negative.changed.connect(self._on_negative)
        self._image.changed.connect(self._on_image_changed)
        on_layers_changed(self._viewer, self, self._on_layer_removed)

    def _bind_keys(self) -> None:
        for key, _, method in SHORTCUTS:
            handler = lambda _viewer, m=method: getattr(self, m)()  # noqa: E731
            self._viewer.bind_key(key, handler, overwrite=True)

    @property
    def busy(self) -> bool:
        """True while any model work (foreground or background embedding) runs."""
        return self.jobs.busy or self.embedding.busy

    def _launch(self, work: Work, name: str, on_done: Callable, **options: Any) -> None:
        """Run foreground work; prompts that arrive meanwhile are applied when it ends."""
        on_finished = options.pop("on_finished", None)

        def finished() -> None:
            if on_finished is not None:
                on_finished()
            if self._sync_pending:
                self._sync_pending = False
                self._sync()

        self.jobs.run(work, name, on_done, on_finished=finished, **options)

    def _ready(self) -> Session | None:
        """The session when an action can run now, else None (after telling the user why)."""
        if self.session is None:
            self.status.error("press Start first (choose the image to segment)")
        elif self.jobs.idle():
            return self.session
        return None

    def start(self) -> None:
        """Create a session for the chosen image (in a worker), then its layers."""
        if (layer := self._image.value) is None:
            self.status.error("open an image first (File > Open, or File > Open Sample > fmseg)")
            return
        self._stop()
        model, data, spacing = self._model.value, layer.data, tuple(layer.scale)
        make = functools.partial(
            self._factory, spacing=spacing, model=model, point_model=L.point_model_for(model),
            window=L.contrast_window(layer),
        )  # fmt: skip
        self.status.say(f"Loading {model} for '{layer.name}' ...")
        work = call_work(lambda: make(np.asarray(data)), f"loading {model}")
        self._launch(work, "start", lambda s: self._on_session(s, layer))

    def _stop(self) -> None:
        """Cancel all work and forget the session (the layers stay)."""
        self.jobs.stop()
        self.embedding.stop()
        self._sync_pending = False
        self.session = None

    def _on_session(self, session: Session, layer: Image) -> None:
        """Show the session's layers; embed all slices in the background, nearest first."""
        self.session, self.image_layer = session, layer
        self._setup_layers(session, layer)
        where = describe(session.predictor.device)  # the core says what runs
        self.status.say(f"Ready on '{layer.name}' ({where}): draw a box or click on the object.")
        self.prefetch.start(session)  # follows the viewed slice; disk cache by content hash

    def _setup_layers(self, session: Session, image: Image) -> None:
        """(Re)create the prompt and object layers; reuse a matching labels layer."""
        for name in (L.PROMPTS_LAYER, L.BOX_LAYER, L.SCRIBBLE_LAYER, L.OBJECT_LAYER):
            if name in self._viewer.layers:
                self._viewer.layers.remove(name)
        viewer, view = self._viewer, L.layer_view(session.labels, image.ndim)
        labels = self.labels_out.find()
        if labels is not None and labels.data.shape == image.data.shape:
            view[...] = np.asarray(labels.data)  # its labels carry over
            labels.data = view
        else:
            labels = self.labels_out.create(image, view)
        zeros = np.zeros(image.data.shape, np.uint8)
        obj = viewer.add_labels(zeros, **L.object_layer_kwargs(image))
        box = viewer.add_shapes(**L.box_layer_kwargs(image))
        scribbles = viewer.add_shapes(**L.scribble_layer_kwargs(image))
        points = viewer.add_points(**L.prompts_layer_kwargs(image))
        self.layers = {"labels": labels, "object": obj, "box": box, "points": points}
        self.layers["scribbles"] = scribbles
        for layer in (box, scribbles, points):
            layer.events.data.connect(self._on_prompts_changed)
        self._on_negative()
        self._apply_tool()

    def current_slice(self) -> int:
        """Index along axis 0 of the image slice the viewer shows."""
        layer = self.image_layer if self.session is not None else None
        return L.slice_at(layer, self._viewer.dims.point, 0)

    def _on_prompts_changed(self, event: Any = None) -> None:
        action = getattr(event, "action", None)
        if self._muted or self.session is None or str(getattr(action, "value", "")).endswith("ing"):
            return
        box = self.layers["box"]
        if stale := L.superseded_shapes(box.data):  # one box per slice: the new one wins
            self._muted = True
            box.selected_data = set(stale)
            box.remove_selected()
            self._muted = False
        self._sync()

    def layer_prompts(self) -> dict[int, Prompts]:
        """The prompts of the two prompt layers, by slice along axis 0."""
        points, box, scr = self.layers["points"], self.layers["box"], self.layers["scribbles"]
        positive = points.features[L.POSITIVE].to_numpy() if len(points.data) else None
        signs = scr.features[L.POSITIVE].to_numpy() if len(scr.data) else None
        scribbles = (scr.data, scr.shape_type, signs)
        shape = self.session.volume.shape[1:]
        return L.prompts_by_slice(points.data, positive, box.data, shape, scribbles)

    def _sync(self) -> None:
        """Re-segment the slices whose prompts changed (in a worker; later if one runs)."""
        if self.jobs.running:
            self._sync_pending = True
            return
        if (session := self.session) is None:
            return
        wanted = self.layer_prompts()
        if todo := L.changed_slices(wanted, session.prompts):
            done = functools.partial(self._on_segmented, session)
            work = call_work(lambda: _apply_prompts(session, wanted, todo), "segmenting")
            self._launch(work, "segmentation", done)

    def _on_segmented(self, session: Session, masks: dict[int, np.ndarray]) -> None:
        if session is not self.session:
            return
        obj = self.layers["object"]
        for i, mask in masks.items():
            L.write_slice(obj.data, i, mask)
        obj.refresh()
        shown = ", ".join(f"slice {i}: {int(m.sum())} px" for i, m in masks.items())
        self.status.say(f"Object on {shown}. Click to correct it, then Propagate or Commit.")

    def _on_negative(self, *_: Any) -> None:
        positive = not self._negative.value
        for name in ("points", "scribbles"):
            if name in self.layers:
                self.layers[name].feature_defaults[L.POSITIVE] = positive
        if "scribbles" in self.layers:
            self.layers["scribbles"].current_edge_color = L.CLICK_COLOURS[positive]

    def toggle_negative(self) -> None:
        """Switch between positive and negative clicks and scribbles (box/lasso: to clicks)."""
        self._negative.value = not self._negative.value
        if self._tool.value not in ("click", "scribble"):
            self._tool.value = "click"

    def _apply_tool(self, *_: Any) -> None:
        name, mode = _TOOL_MODES[self._tool.value]
        layer = self.layers.get(name)
        if layer is None or layer not in self._viewer.layers:
            return  # no session yet, or the viewer is closing
        self._viewer.layers.selection.active = layer
        layer.mode = mode

    def _clear_prompt_layers(self) -> None:
        self._show_prompts({})

    def _show_prompts(self, prompts: dict) -> None:
        self._muted = True  # rewriting the layers must not re-segment
        try:
            show_prompts(self.layers, prompts, self.layers["points"].ndim)
        finally:
            self._muted = False

    def _show_object(self) -> None:
        obj = self.layers["object"]
        np.copyto(obj.data, L.layer_view(self.session.mask, obj.ndim))
        obj.refresh()

    def propagate(self) -> None:
        """Propagate the object from the current slice through the volume (in a worker)."""
        if (session := self._ready()) is None:
            return
        i = self.current_slice()
        if not np.take(session.mask, i, axis=0).any():
            self.status.error(f"segment the object on this slice ({i}) first: it has no mask yet")
            return
        self.status.say(f"Propagating from slice {i} ...")
        self._launch(
            session.propagate_iter(0, i),
            "propagation",
            lambda r: self.status.say(f"Propagated to slices {r.first}-{r.last} ({r.reason})."),
            on_progress=self._on_propagate_step,
            on_finished=self._show_object,
            kept="the slices done are kept",
        )

    def _on_propagate_step(self, step: Progress) -> None:
        self.status.say(f"Propagating: {step.message}")
        if time.monotonic() - self._last_refresh > _REFRESH_S:
            self._last_refresh = time.monotonic()
            self._show_object()

    def commit(self) -> None:
        """Write the object into the labels layer as the label value (in a worker), start anew."""
        if (session := self._ready()) is None:
            return
        if not session.mask.any():
            self.status.error("nothing to commit: segment an object first (box or click)")
            return
        label = int(self._label.value)  # the spin box keeps it within the labels' dtype
        overwrite = bool(self._overwrite.value)
        work = call_work(lambda: session.commit(label, overwrite=overwrite), "committing")
        self.status.say(f"Committing label {label} ...")
        self._launch(work, "commit", functools.partial(self._on_committed, session, label))

    def _on_committed(self, session: Session, label: int, n: int) -> None:
        if session is not self.session:
            return
        self._clear_prompt_layers()
        self._show_object()
        self.layers["labels"].refresh()
        hint = "" if n else " (all were labelled already: tick 'overwrite existing labels')"
        self.status.say(f"Committed {n} voxels as label {label}{hint}. Undo with Ctrl+Z.")

    def undo(self, redo: bool = False) -> None:
        """Undo the last interaction, or redo the last undone one (in a worker)."""
        if (session := self._ready()) is None:
            return
        name = session.history.redo_name if redo else session.history.undo_name
        if name is None:
            self.status.error(history_message(None, redo).rstrip(".").lower())
            return
        step = session.history.redo if redo else session.history.undo
        work = call_work(lambda: step(session), "redoing" if redo else "undoing")
        done = functools.partial(self._on_history, session, redo)
        self._launch(work, "redo" if redo else "undo", done)

    def redo(self) -> None:
        """Redo the last undone interaction (in a worker)."""
        self.undo(redo=True)

    def _on_history(self, session: Session, redo: bool, name: str | None) -> None:
        if session is not self.session:
            return
        self._show_prompts(session.prompts)
        self._show_object()
        self.layers["labels"].refresh()
        self.status.say(history_message(name, redo))

    def start_from_layer(self) -> None:
        """Make the label value of the "edit from" layer the working object (in a worker).

        From "fmseg labels" the label is lifted out (Commit writes the edit back); from any
        other labels layer (annotations, in-context, adapter results) it is copied.
        """
        if (session := self._ready()) is None:
            return
        layer, label = self._source.value, int(self._label.value)
        if layer is None or np.shape(layer.data)[-2:] != session.volume.shape[-2:]:
            self.status.error("choose a labels layer on this image under 'edit from'")
            return
        if layer is self.layers["labels"]:
            work = call_work(lambda: session.start_from_label(label), "lifting the label")
        else:
            data = np.asarray(layer.data).reshape(session.volume.shape) == label
            work = call_work(lambda: session.set_working_mask(data), "copying the label")
        self._clear_prompt_layers()
        done = functools.partial(self._on_started, session, label, layer.name)
        self._launch(work, "edit label", done)

    def _on_started(self, session: Session, label: int, name: str, n: int) -> None:
        if session is not self.session:
            return
        self._show_object()
        self.layers["labels"].refresh()
        self.status.say(f"Editing label {label} of '{name}' ({n} voxels): click to correct it.")

    def clear(self) -> None:
        """Remove all prompts and the working object (start the object again)."""
        if (session := self._ready()) is None:
            return
        self._clear_prompt_layers()
        work = call_work(session.reset_object, "clearing")  # a whole-volume undo step
        self._launch(work, "clear", functools.partial(self._on_cleared, session))

    def _on_cleared(self, session: Session, _result: None) -> None:
        if session is not self.session:
            return
        self._show_object()
        self.status.say("Prompts cleared: draw a box or click on the object.")

    def cancel(self) -> None:
        """Stop running work (propagation, segmentation, background embedding)."""
        if not any([self.jobs.cancel(quiet=True), self.embedding.cancel(quiet=True)]):
            self.status.say("Nothing to cancel.")

    def _on_image_changed(self, layer: Image | None) -> None:
        if self.session is not None and layer is not None and layer is not self.image_layer:
            self.start()

    def _on_layer_removed(self, event: Any) -> None:
        if event.type == "removed" and event.value is self.image_layer:
            self._stop()
            self.image_layer, self.layers = None, {}
            self.status.say("The image was removed: choose one and press Start.")
