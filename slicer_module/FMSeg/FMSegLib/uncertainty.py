"""Uncertainty outputs on MRML: samples as a sequence, the mean, and the maps a clinician reads.

The maps, their names and legends are fmseg's (:data:`fmseg.uncertainty.MAPS`,
:func:`fmseg.uncertainty.legend`); this module only stores and displays them:

- **disagreement** by default (how much the candidates disagree), **total uncertainty** (the
  entropy of the mean) on request; one scalar volume each, named ``"<name> <title>"``;
- each map node carries its legend: the node description and the attributes
  ``fmseg.uncertainty.kind`` and ``fmseg.uncertainty.legend``;
- its display uses fmseg's colour ramp (a colour table, transparent at 0 bits) over the fixed
  window 0..1 bit, so a structure the candidates agree on shows the image unchanged;
- :func:`show` (GUI only) puts the first map over the volume in the slice views, with a
  colour legend titled by the map.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import slicer

from fmseg import uncertainty

from . import mrml

KIND_ATTRIBUTE = "fmseg.uncertainty.kind"
LEGEND_ATTRIBUTE = "fmseg.uncertainty.legend"
COLOUR_TABLE = "fmseg uncertainty (bits)"


@dataclass(frozen=True)
class UncertaintyNodes:
    """The nodes :func:`write_uncertainty` creates.

    Attributes:
        samples: Sequence node of the K sample-probability volumes.
        browser: Its sequence browser (None without the Sequences module).
        mean: Mean-probability volume.
        maps: Map kind (``"disagreement"``, ``"total"``) -> scalar volume node, in the order
            asked for.
    """

    samples: Any
    browser: Any
    mean: Any
    maps: dict[str, Any] = field(default_factory=dict)


def colour_table(scene):
    """The scene's colour table of the maps (made once): fmseg's ramp, transparent at 0."""
    found = scene.GetFirstNodeByName(COLOUR_TABLE)
    if found is not None and found.IsA("vtkMRMLColorTableNode"):
        return found
    ramp = uncertainty.colour_ramp(256)
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOUR_TABLE)
    table.SetTypeToUser()
    table.SetNumberOfColors(len(ramp))
    table.SetNamesInitialised(True)
    for i, (r, g, b, a) in enumerate(ramp):
        table.SetColor(i, f"{i / (len(ramp) - 1):.3f} bit", r, g, b, a)
    return table


def add_map(scene, samples: np.ndarray, kind: str, ijk_to_ras: np.ndarray, name: str):
    """A scalar volume of the map ``kind`` of ``(K, K', J, I)`` samples, with legend and display.

    Raises:
        ValueError: Unknown ``kind`` (one line naming the choices).
    """
    spec = uncertainty.legend(kind)  # raises first, before any node is made
    values = uncertainty.uncertainty_map(samples, kind)
    node = mrml.add_scalar_volume(scene, values, ijk_to_ras, f"{name} {spec.title}")
    node.SetDescription(spec.text)
    node.SetAttribute(KIND_ATTRIBUTE, kind)
    node.SetAttribute(LEGEND_ATTRIBUTE, spec.text)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetAndObserveColorNodeID(colour_table(scene).GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(*uncertainty.DISPLAY_RANGE)
    return node


def write_uncertainty(
    scene,
    samples: np.ndarray,
    volume_node,
    name: str,
    kinds: Sequence[str] = (uncertainty.DEFAULT_MAP,),
) -> UncertaintyNodes:
    """Samples as a browsable sequence, the mean probability, and the maps ``kinds``.

    Args:
        scene: The MRML scene.
        samples: ``(K, K', J, I)`` sample probabilities on ``volume_node``'s grid.
        volume_node: The sampled volume (its geometry is copied).
        name: Prefix of the new nodes' names.
        kinds: Maps of :data:`fmseg.uncertainty.MAPS` to make (default: disagreement only;
            add ``"total"`` for total uncertainty).

    Raises:
        ValueError: An unknown kind (checked before any node is made).
    """
    for kind in kinds:
        uncertainty.legend(kind)
    m = mrml.ijk_to_ras(volume_node)
    sequence, browser = mrml.add_volume_sequence(scene, samples, m, f"{name} samples")
    mean = mrml.add_scalar_volume(scene, uncertainty.mean_probability(samples), m, f"{name} mean")
    maps = {kind: add_map(scene, samples, kind, m, name) for kind in kinds}
    return UncertaintyNodes(sequence, browser, mean, maps)


def describe(nodes: UncertaintyNodes) -> str:
    """Status text: what was made and what the shown map's 0 and 1 bit mean."""
    k = nodes.samples.GetNumberOfDataNodes()
    legends = [uncertainty.legend(kind).text for kind in nodes.maps]
    return f"{k} samples. " + " | ".join(legends)


def write_and_show(samples: np.ndarray, *, scene, volume_node) -> str:
    """The Widget's write step: default maps, shown over the volume; returns the status text."""
    nodes = write_uncertainty(scene, samples, volume_node, volume_node.GetName())
    show(nodes, volume_node)
    return describe(nodes)


def show(nodes: UncertaintyNodes, volume_node) -> None:
    """Slice views: the volume under the first map (GUI only), with a colour legend.

    The map's colour table carries the transparency, so the foreground is fully opaque where
    the map is 1 bit and invisible where it is 0.
    """
    if not nodes.maps:
        return
    kind, node = next(iter(nodes.maps.items()))
    slicer.util.setSliceViewerLayers(
        background=volume_node, foreground=node, foregroundOpacity=1.0, fit=False
    )
    try:  # the Colors module is absent in some builds: the legend is also in the status line
        legend = slicer.modules.colors.logic().AddDefaultColorLegendDisplayNode(node)
        legend.SetTitleText(f"{uncertainty.legend(kind).title} (bits)")
        legend.SetUseColorNamesForLabels(False)
        legend.SetLabelFormat("%.1f")
        legend.SetNumberOfLabels(3)
    except (AttributeError, TypeError) as exc:
        logging.info("FMSeg: no colour legend (%s)", exc)
