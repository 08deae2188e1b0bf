"""The **Segment** dock widget: prompt a foundation model slice by slice, propagate, commit.

A thin widget: clicks ("fmseg prompts") and boxes ("fmseg box") are napari layers that
:mod:`._layers` turns into prompts; an :class:`fmseg.Session` does the work, every model call in
a worker (:mod:`._worker`). "fmseg object" shows the working object, "fmseg labels" the
committed labels (the session's array, with the image's metadata for the fmseg writer).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from napari.layers import Image

from fmseg.progress import Progress, Work
from fmseg.prompts import Prompts
from fmseg.registry import REGISTRY
from fmseg.session import Session

from . import _layers as L
from ._status import StatusContainer
from ._worker import call_work, run_work

if TYPE_CHECKING:
    import napari

#: Keyboard shortcuts (napari key names), what they do, and the widget method they call. They
#: avoid the keys napari's Points, Shapes, Labels and Image layers already use.
SHORTCUTS = (
    ("N", "toggle negative (background) clicks", "toggle_negative"),
    ("Shift-C", "commit the object as the label value", "commit"),
    ("Shift-U", "undo the last commit", "undo"),
    ("Shift-G", "propagate the object through the volume", "propagate"),
    ("Shift-X", "clear all prompts and the object", "clear"),
    ("Shift-Escape", "cancel running work", "cancel"),
)
HELP = "Shortcuts (canvas focused):\n" + "\n".join(f"  {k}: {d}" for k, d, _ in SHORTCUTS)
_BUTTONS = (
    (("Propagate", "propagate"), ("Commit", "commit"), ("Undo commit", "undo")),
    (("Clear prompts", "clear"), ("Cancel", "cancel")),
)
_REFRESH_S = 0.3  # redraw the object at most this often while propagating


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


def _embed_all(session: Session, order: list[int]) -> Work[int]:
    """Embed slices along axis 0 in ``order``: the first alone (soonest ready), then in pairs."""
    done = 0
    for part, batch in ((order[:1], 1), (order[1:], 2)):
        for step in session.embed_volume_iter(0, part, batch=batch):
            yield Progress(done + step.done, len(order), step.message)
        done += len(part)
    return done


class SegmentWidget(StatusContainer):
    """Interactive foundation-model segmentation of the chosen image layer.

    Args:
        viewer: The napari viewer (npe2 passes it).
        tiny: Use tiny random-weight models (tests and demos without weights).
        session_factory: Builds the session, ``factory(volume, spacing=..., model=...,
            point_model=...)``; defaults to :class:`fmseg.Session`.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        tiny: bool = False,
        session_factory: Callable[..., Session] | None = None,
    ) -> None:
        super().__init__()
        self._viewer = viewer
        self._factory = session_factory or functools.partial(Session, tiny=tiny)
        self.session: Session | None = None
        self.image_layer: Image | None = None
        self.layers: dict[str, Any] = {}
        self._job: Any = None
        self._job_name = ""
        self._embedder: Any = None
        self._stopping: set[Any] = set()  # cancelled workers still finishing their step
        self._sync_pending = False
        self._muted = False
        self._last_refresh = 0.0
        self._build()
        self._bind_keys()

    def _build(self) -> None:
        self._image = mw.ComboBox(label="image", choices=self._image_choices)
        usable = [n for n, spec in REGISTRY.items() if spec.weights is not None]
        self._model = mw.ComboBox(label="model", choices=usable, value="litemedsam")
        self._start = mw.PushButton(text="Start")
        self._tool = mw.RadioButtons(
            label="prompt", choices=["box", "click"], value="box", orientation="horizontal"
        )
        self._negative = mw.CheckBox(text="negative click (N)")
        self._label = mw.SpinBox(label="label value", min=1, max=65535, value=1)
        self._overwrite = mw.CheckBox(text="overwrite existing labels")
        button_rows = [self._button_row(r) for r in _BUTTONS]
        self._embed_bar = mw.ProgressBar(label="embedded", visible=False)
        self._job_bar = mw.ProgressBar(label="progress", visible=False)
        self.status = mw.Label(value="Choose an image and press Start.")  # public: tests read it
        self.status.native.setWordWrap(True)
        self.extend(
            [self._image, self._model, self._start, self._tool]
            + [self._negative, self._label, self._overwrite, *button_rows]
            + [self._embed_bar, self._job_bar, self.status]
        )
        self.tooltip = HELP
        self._start.changed.connect(self.start)
        self._tool.changed.connect(self._apply_tool)
        self._negative.changed.connect(self._on_negative)
        self._image.changed.connect(self._on_image_changed)
        self._viewer.layers.events.inserted.connect(self._image.reset_choices)
        self._viewer.layers.events.removed.connect(self._on_layer_removed)

    def _button_row(self, row: tuple[tuple[str, str], ...]) -> mw.Container:
        keys = {m: k for k, _, m in SHORTCUTS}
        buttons = [mw.PushButton(text=t, tooltip=f"{t} ({keys[m]})") for t, m in row]
        for button, (_, method) in zip(buttons, row, strict=True):
            button.changed.connect(getattr(self, method))
        return mw.Container(widgets=buttons, layout="horizontal", labels=False)

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(lay.name, lay) for lay in self._viewer.layers if isinstance(lay, Image)]

    def _bind_keys(self) -> None:
        for key, _, method in SHORTCUTS:
            handler = lambda _viewer, m=method: getattr(self, m)()  # noqa: E731
            self._viewer.bind_key(key, handler, overwrite=True)

    @property
    def busy(self) -> bool:
        """True while any model work (foreground or background embedding) runs."""
        return self._job is not None or self._embedder is not None or bool(self._stopping)

    def _launch(self, work: Work, name: str, slot: str = "_job", **callbacks: Any) -> None:
        """Run work in a worker held in ``slot`` ("_job": foreground, one at a time)."""
        on_finished = callbacks.pop("on_finished", None)
        bar = self._job_bar if slot == "_job" else self._embed_bar
        on_error = lambda exc: self._error(f"{name} failed: {exc}")  # noqa: E731
        worker = run_work(work, on_error=on_error, progress_bar=bar, start=False, **callbacks)
        worker.finished.connect(lambda: self._finished(worker, slot, on_finished))
        setattr(self, slot, worker)
        self._job_name = name if slot == "_job" else self._job_name
        worker.start()

    def _finished(self, worker: Any, slot: str, on_finished: Callable | None) -> None:
        self._stopping.discard(worker)
        if getattr(self, slot) is not worker:
            return  # a cancelled worker ending after its replacement started
        setattr(self, slot, None)
        if on_finished is not None:
            on_finished()
        if self._sync_pending and self._job is None:
            self._sync_pending = False
            self._sync()

    def _ready(self) -> Session | None:
        """The session when an action can run now, else None (after telling the user why)."""
        if self.session is None:
            self._error("press Start first (choose the image to segment)")
        elif self._job is not None:
            self._error(f"{self._job_name} is still running: wait for it, or press Cancel")
        else:
            return self.session
        return None

    def start(self) -> None:
        """Create a session for the chosen image (in a worker), then its layers."""
        if (layer := self._image.value) is None:
            self._error("open an image first (File > Open, or File > Open Sample > fmseg)")
            return
        self._stop()
        model, data, spacing = self._model.value, layer.data, tuple(layer.scale)
        make = functools.partial(
            self._factory, spacing=spacing, model=model, point_model=L.point_model_for(model)
        )
        self._say(f"Loading {model} for '{layer.name}' ...")
        work = call_work(lambda: make(np.asarray(data)), f"loading {model}")
        self._launch(work, "start", on_done=lambda s: self._on_session(s, layer))

    def _stop(self) -> None:
        """Cancel all work and forget the session (the layers stay)."""
        self._stopping.update(filter(None, (self._job, self._embedder)))
        for worker in self._stopping:
            worker.quit()
        self._job = self._embedder = None
        self._sync_pending = False
        self.session = None

    def _on_session(self, session: Session, layer: Image) -> None:
        """Show the session's layers; embed all slices in the background, nearest first."""
        self.session, self.image_layer = session, layer
        self._setup_layers(session, layer)
        self._say(f"Ready on '{layer.name}': draw a box or click on the object.")
        order = L.embedding_order(session.n_slices(0), self.current_slice())
        self._launch(_embed_all(session, order), "embedding", "_embedder")

    def _setup_layers(self, session: Session, image: Image) -> None:
        """(Re)create the prompt and object layers; reuse a matching labels layer."""
        for name in (L.PROMPTS_LAYER, L.BOX_LAYER, L.OBJECT_LAYER):
            if name in self._viewer.layers:
                self._viewer.layers.remove(name)
        viewer, ndim = self._viewer, image.ndim
        labels = viewer.layers[L.LABELS_LAYER] if L.LABELS_LAYER in viewer.layers else None
        if labels is not None and labels.data.shape == image.data.shape:
            L.layer_view(session.labels, ndim)[...] = np.asarray(labels.data)
            labels.data = L.layer_view(session.labels, ndim)
        else:
            labels = viewer.add_labels(
                L.layer_view(session.labels, ndim), **L.labels_layer_kwargs(image)
            )
        zeros = np.zeros(image.data.shape, np.uint8)
        obj = viewer.add_labels(zeros, **L.object_layer_kwargs(image))
        box = viewer.add_shapes(**L.box_layer_kwargs(image))
        points = viewer.add_points(**L.prompts_layer_kwargs(image))
        self.layers = {"labels": labels, "object": obj, "box": box, "points": points}
        for layer in (box, points):
            layer.events.data.connect(self._on_prompts_changed)
        self._on_negative()
        self._apply_tool()

    def current_slice(self) -> int:
        """Index along axis 0 of the image slice the viewer shows."""
        layer, session = self.image_layer, self.session
        if layer is None or session is None or layer.ndim == 2:
            return 0
        z = layer.world_to_data(self._viewer.dims.point)[0]
        return int(np.clip(round(float(z)), 0, session.n_slices(0) - 1))

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
        points, box = self.layers["points"], self.layers["box"]
        positive = points.features[L.POSITIVE].to_numpy() if len(points.data) else None
        return L.prompts_by_slice(points.data, positive, box.data, self.session.volume.shape[1:])

    def _sync(self) -> None:
        """Re-segment the slices whose prompts changed (in a worker; later if one runs)."""
        if self._job is not None:
            self._sync_pending = True
            return
        if (session := self.session) is None:
            return
        wanted = self.layer_prompts()
        if todo := L.changed_slices(wanted, session.prompts):
            done = functools.partial(self._on_segmented, session)
            work = call_work(lambda: _apply_prompts(session, wanted, todo), "segmenting")
            self._launch(work, "segmentation", on_done=done)

    def _on_segmented(self, session: Session, masks: dict[int, np.ndarray]) -> None:
        if session is not self.session:
            return
        obj = self.layers["object"]
        for i, mask in masks.items():
            L.write_slice(obj.data, i, mask)
        obj.refresh()
        shown = ", ".join(f"slice {i}: {int(m.sum())} px" for i, m in masks.items())
        self._say(f"Object on {shown}. Click to correct it, then Propagate or Commit.")

    def _on_negative(self, *_: Any) -> None:
        if "points" in self.layers:
            self.layers["points"].feature_defaults[L.POSITIVE] = not self._negative.value

    def toggle_negative(self) -> None:
        """Switch between positive and negative clicks (and to the click tool)."""
        self._negative.value = not self._negative.value
        self._tool.value = "click"

    def _apply_tool(self, *_: Any) -> None:
        layer = self.layers.get("box" if self._tool.value == "box" else "points")
        if layer is None or layer not in self._viewer.layers:
            return  # no session yet, or the viewer is closing
        self._viewer.layers.selection.active = layer
        layer.mode = "add_rectangle" if self._tool.value == "box" else "add"

    def _clear_prompt_layers(self) -> None:
        points, box = self.layers["points"], self.layers["box"]
        self._muted = True  # emptying the layers must not re-segment
        points.data = np.zeros((0, points.ndim))
        box.data = []
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
            self._error(f"segment the object on this slice ({i}) first: it has no mask yet")
            return
        self._say(f"Propagating from slice {i} ...")
        self._launch(
            session.propagate_iter(0, i),
            "propagation",
            on_progress=self._on_propagate_step,
            on_done=lambda r: self._say(f"Propagated to slices {r.first}-{r.last} ({r.reason})."),
            on_cancelled=lambda: self._say("Propagation cancelled; the slices done are kept."),
            on_finished=self._show_object,
        )

    def _on_propagate_step(self, step: Progress) -> None:
        self._say(f"Propagating: {step.message}")
        if time.monotonic() - self._last_refresh > _REFRESH_S:
            self._last_refresh = time.monotonic()
            self._show_object()

    def commit(self) -> None:
        """Write the object into the labels layer as the label value, and start a new one."""
        if (session := self._ready()) is None:
            return
        if not session.mask.any():
            self._error("nothing to commit: segment an object first (box or click)")
            return
        label = int(self._label.value)  # the spin box keeps it within the labels' dtype
        n = session.commit(label, overwrite=bool(self._overwrite.value))
        self._clear_prompt_layers()
        self._show_object()
        self.layers["labels"].refresh()
        hint = "" if n else " (all were labelled already: tick 'overwrite existing labels')"
        self._say(f"Committed {n} voxels as label {label}{hint}. Undo with Shift-U.")

    def undo(self) -> None:
        """Undo the last commit."""
        if (session := self._ready()) is None:
            return
        if not session.undo():
            self._error("nothing to undo: no commit yet")
            return
        self.layers["labels"].refresh()
        self._say("Last commit undone.")

    def clear(self) -> None:
        """Remove all prompts and the working object (start the object again)."""
        if (session := self._ready()) is None:
            return
        session.reset_object()
        self._clear_prompt_layers()
        self._show_object()
        self._say("Prompts cleared: draw a box or click on the object.")

    def cancel(self) -> None:
        """Stop running work (propagation, segmentation, background embedding)."""
        workers = list(filter(None, (self._job, self._embedder)))
        for worker in workers:
            worker.quit()
        self._say("Cancelling ..." if workers else "Nothing to cancel.")

    def _on_image_changed(self, layer: Image | None) -> None:
        if self.session is not None and layer is not None and layer is not self.image_layer:
            self.start()

    def _on_layer_removed(self, event: Any) -> None:
        self._image.reset_choices()
        if event.value is self.image_layer:
            self._stop()
            self.image_layer, self.layers = None, {}
            self._say("The image was removed: choose one and press Start.")
