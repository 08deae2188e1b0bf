"""Small controls the fmseg tools share: status line, button rows, Qt panels, layer choices."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from magicgui import widgets as mw
from napari.layers import Labels
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QWidget

from . import _layers as L

if TYPE_CHECKING:
    import napari

#: A row of buttons: ``(text, method name)`` pairs.
ButtonRow = Sequence[tuple[str, str]]


class StatusLine(mw.Label):
    """A word-wrapped status line: what the tool did, or why it could not.

    Args:
        value: The first message (what to do first).
    """

    def __init__(self, value: str = "") -> None:
        super().__init__(value=value)
        self.native.setWordWrap(True)

    def say(self, message: str) -> None:
        """Show ``message``."""
        self.value = message

    def error(self, message: str) -> bool:
        """Show ``message`` as an error (here and as a napari notification); returns False."""
        self.say(f"Error: {message}")
        show_error(message)
        return False


def button_row(
    owner: Any, row: ButtonRow, tooltips: Mapping[str, str] | None = None
) -> mw.Container:
    """A horizontal row of buttons, each calling ``owner.<method>()`` when clicked.

    The method is looked up at each click, so tests and shortcuts may replace it.

    Args:
        owner: The object whose methods the buttons call.
        row: ``(text, method name)`` per button.
        tooltips: Tooltip per method name.
    """
    tips = tooltips or {}
    buttons = [mw.PushButton(text=text, tooltip=tips.get(method)) for text, method in row]
    for button, (_, method) in zip(buttons, row, strict=True):
        button.changed.connect(lambda *_, m=method: getattr(owner, m)())
    return mw.Container(widgets=buttons, layout="horizontal", labels=False)


def qt_panel(label: str, widget: QWidget) -> mw.Container:
    """A magicgui row holding a plain Qt widget (a list, a plot) under ``label``."""
    panel = mw.Container(label=label, labels=False)
    panel.native.layout().setContentsMargins(0, 0, 0, 0)
    panel.native.layout().addWidget(widget)
    return panel


def on_layers_changed(
    viewer: napari.viewer.Viewer, widget: mw.Widget, callback: Callable[[Any], object]
) -> None:
    """Call ``callback(event)`` when layers are added or removed, while ``widget`` exists."""
    events = (viewer.layers.events.inserted, viewer.layers.events.removed)
    for event in events:
        event.connect(callback)
    widget.native.destroyed.connect(lambda *_: [e.disconnect(callback) for e in events])


def layer_box(
    viewer: napari.viewer.Viewer, label: str, kind: type, exclude: Sequence[str] = (), **kw: Any
) -> mw.ComboBox:
    """A combo box of the viewer's layers of ``kind`` (except ``exclude``), kept up to date."""
    choices = lambda _w: L.choices(viewer.layers, kind, exclude)  # noqa: E731
    box = mw.ComboBox(label=label, choices=choices, **kw)
    on_layers_changed(viewer, box, lambda *_: box.reset_choices())
    return box


def annotations_box(
    viewer: napari.viewer.Viewer, exclude: Sequence[str] = L.OUTPUTS
) -> mw.ComboBox:
    """The Labels layer with the clinician's annotations, chosen sensibly unless the user picks.

    As layers come and go it follows :func:`~napari_fmseg._layers.preferred_annotations`
    (the labels layer the user opened, not an empty layer fmseg made, "fmseg labels"), except
    while the layer the user picked in the list exists.
    """
    box = layer_box(viewer, "annotations", Labels, exclude)
    picked: list[Any] = []  # the layers the user picked, the last one counts

    def prefer(*_: Any) -> None:
        box.reset_choices()  # whatever order the viewer calls its listeners in
        now = box.value
        if now is not None and ((picked and picked[-1] is now) or L.is_users_annotations(now)):
            return  # the user's pick, or already the user's annotations
        if (best := L.preferred_annotations(list(box.choices))) is not None:
            box.value = best

    box.native.activated.connect(lambda *_: picked.append(box.value))
    on_layers_changed(viewer, box, prefer)
    prefer()
    return box


def offer_choices(combo: mw.ComboBox, allowed: Sequence[str]) -> None:
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
