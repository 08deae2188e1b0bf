"""How the Uncertainty tool draws its maps over the image: the clinician reads them correctly.

The maps, their names and legends are :mod:`fmseg.uncertainty`'s (:data:`~fmseg.uncertainty.MAPS`,
:func:`~fmseg.uncertainty.legend`); this module only displays them:

- one Image layer per map, named by the map's title; the chosen one visible, the other hidden;
- translucent blending and the core's colour ramp (:func:`~fmseg.uncertainty.ramp_controls`),
  fully transparent at 0, so a structure the candidates agree on shows the image unchanged
  (additive blending of a black-to-bright map would wash the whole organ);
- the fixed range :data:`~fmseg.uncertainty.DISPLAY_RANGE` (0..1 bit), never the data range,
  which makes tiny values look large;
- a colour bar, and the legend (what 0 and 1 bit mean) in the canvas's text overlay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils import Colormap

from fmseg.uncertainty import (
    DEFAULT_MAP,
    DISPLAY_RANGE,
    MAPS,
    legend,
    ramp_controls,
    uncertainty_map,
)

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

#: Layer name of each map kind: the map's title ("disagreement", "total uncertainty").
MAP_LAYERS = {kind: spec.title for kind, spec in MAPS.items()}
#: Choices for a combo box: ``(text, kind)``, the default (disagreement) first.
MAP_CHOICES = [(spec.title, kind) for kind, spec in MAPS.items()]


def colormap() -> Colormap:
    """The maps' colormap: transparent at 0 bits, opaque red at 1 bit (the core's ramp)."""
    values, colours = ramp_controls()
    return Colormap(colours, name="fmseg uncertainty (bits)", controls=values)


def map_style(kind: str) -> dict[str, Any]:
    """Keyword arguments of ``viewer.add_image`` for the map ``kind`` (shown if the default)."""
    return {
        "colormap": colormap(),
        "blending": "translucent",
        "contrast_limits": DISPLAY_RANGE,
        "visible": kind == DEFAULT_MAP,
    }


def legend_text(kind: str) -> str:
    """Three lines for the legend: the map's title, what 0 means, what 1 bit means."""
    spec = legend(kind)
    return f"{spec.title} (bits)\n0 = {spec.zero}\n1 bit = {spec.top}"


def show_map(viewer: napari.viewer.Viewer, kind: str) -> Image | None:
    """Show the map ``kind`` (hide the other), its colour bar and its legend; returns its layer.

    The range is set back to 0..1 bit each time: a user's contrast change must not make the
    next reading misleading. Does nothing (returns None) before the maps exist.
    """
    shown = None
    for other, name in MAP_LAYERS.items():
        layer = next((x for x in viewer.layers if x.name == name), None)
        if layer is None:
            continue
        layer.visible = other == kind
        if tuple(layer.contrast_limits) != DISPLAY_RANGE:  # each change redraws the layer
            layer.contrast_limits = DISPLAY_RANGE
        if (colorbar := getattr(layer, "colorbar", None)) is not None:
            colorbar.visible = other == kind
        if other == kind:
            shown = layer
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)  # napari >= 0.9
    overlay = overlays["text"] if overlays is not None else viewer.text_overlay
    overlay.text = legend_text(kind) if shown is not None else ""
    overlay.visible = shown is not None
    if shown is not None:
        overlay.position = "bottom_left"
        overlay.font_size = 11
    return shown


def maps_of(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Every map of :data:`MAP_LAYERS` of ``(K, ...)`` samples, layer name -> ``(...)`` bits."""
    return {name: uncertainty_map(samples, kind) for kind, name in MAP_LAYERS.items()}
