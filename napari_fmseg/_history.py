"""Undo and redo in the Segment tool: the core session keeps the steps, this shows them.

Ctrl+Z / Ctrl+Shift+Z (and Shift-U) are bound on the viewer. napari asks the *active layer's*
key bindings first, so with a Labels layer active (painting) Ctrl+Z stays napari's own labels
undo; with an fmseg prompt layer (or an image) active it undoes the last fmseg interaction.
After an undo or redo the prompt layers are rewritten from the session's prompts (a scribble
shows as the clicks it became).
"""

from __future__ import annotations

from typing import Any

from . import _layers as L


def show_prompts(layers: dict[str, Any], prompts: dict, ndim: int) -> None:
    """Rewrite the clicks, box and scribbles layers from a session's axis-0 ``prompts``.

    The caller mutes its prompt-change handler meanwhile (nothing needs re-segmenting).
    """
    data = L.layers_from_prompts(prompts, ndim)
    points = layers["points"]
    points.data = data["points"]
    points.features = {L.POSITIVE: data["positive"]}
    layers["box"].data = []
    if data["boxes"]:
        layers["box"].add_rectangles(data["boxes"])
    scribbles = layers["scribbles"]
    scribbles.data = []
    if data["lassos"]:
        scribbles.add_polygons(data["lassos"])


def history_message(undone: str | None, redo: bool) -> str:
    """Status line after an undo (``redo`` False) or redo of the step named ``undone``."""
    if undone is None:
        return "Nothing to redo." if redo else "Nothing to undo."
    return f"{'Redid' if redo else 'Undid'} {undone}."
