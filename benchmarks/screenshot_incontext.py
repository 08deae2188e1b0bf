"""Screenshot of the In-context widget on the sample CT: a support set of a few slices, a volume.

Run from the repository root under an X server (napari needs one to draw)::

    xvfb-run -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/screenshot_incontext.py

It opens napari with the shipped liver CT and its ground-truth labels (as the clinician's
"annotations" layer), docks fmseg through the plugin manifest, adds a few axial slices of
the liver (label 1) to the support set, segments the whole volume with a fast baseline backend
(``interpolation`` by default; no weights needed), shows the result on a slice between two
supports, and saves ``docs/screenshot_incontext.png``. It prints JSON: the slices used, the
Dice of the result against the liver labels, and the time the segmentation took.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import napari
import numpy as np

from fmseg.io import load_volume
from napari_fmseg._incontext_widget import OUTPUT_LAYER
from napari_fmseg._io import SAMPLE_DIR

REPO = Path(__file__).resolve().parents[1]


def wait_until(condition: Callable[[], bool], timeout: float = 600.0) -> float:
    """Run the Qt event loop until ``condition()``; returns the seconds waited."""
    app, start = napari.qt.get_qapp(), time.monotonic()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise TimeoutError("the widget did not finish in time")
    app.processEvents()
    return time.monotonic() - start


def liver_supports(widget_name: str, slices: list[int]):
    """Open the sample CT with a docked fmseg widget whose support set holds liver slices.

    The CT's labels become the "annotations" layer; axial ``slices`` of the liver (label 1) are
    added to the support set of the widget ``widget_name``.

    Returns:
        ``(viewer, widget, truth)``, ``truth`` the ``(z, y, x)`` label volume.
    """
    truth = np.transpose(load_volume(SAMPLE_DIR / "sample_ct_labels.nii.gz").array)  # (z, y, x)
    viewer = napari.Viewer(title="fmseg")
    viewer.window.resize(1600, 1000)
    viewer.open_sample("fmseg", "sample_ct")
    image = viewer.layers["sample_ct"]
    geometry = {"scale": image.scale, "translate": image.translate}
    annotations = viewer.add_labels(truth.astype(np.int32), name="annotations", **geometry)
    _, dock = viewer.window.add_plugin_dock_widget("fmseg")
    widget = dock.show_tool(widget_name)
    widget.panel._annotations.value = annotations  # the support set the two tools share
    widget.panel._label.value = 1  # the liver
    for z in slices:
        viewer.dims.set_current_step(0, z)
        if not widget.panel.add_current_slice():
            raise SystemExit(widget.status.value)
    return viewer, widget, truth


def show_and_save(viewer: napari.Viewer, path: Path, axis: int, index: int, active: str) -> None:
    """Reset the view to slice ``index`` along dims ``axis``, select layer ``active``, save."""
    viewer.reset_view()
    viewer.dims.set_current_step(axis, index)
    viewer.layers.selection.active = viewer.layers[active]
    wait_until(lambda: True)
    viewer.screenshot(str(path), canvas_only=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot_incontext.png")
    parser.add_argument("--backend", default="interpolation")
    parser.add_argument("--slices", type=int, nargs="+", default=[4, 18, 32, 46, 60])
    parser.add_argument("--show", type=int, default=25, help="axial slice shown (napari index)")
    args = parser.parse_args()

    viewer, widget, truth = liver_supports("In-context", args.slices)
    widget._backend_name.value = args.backend

    t0 = time.monotonic()
    widget.segment()
    wait_until(lambda: not widget.busy)
    seconds = time.monotonic() - t0
    if OUTPUT_LAYER not in viewer.layers:
        raise SystemExit(widget.status.value)
    got, liver = np.asarray(viewer.layers[OUTPUT_LAYER].data) > 0, truth == 1
    dice = 2 * (got & liver).sum() / (got.sum() + liver.sum())
    viewer.layers["annotations"].visible = False  # the supports are in the thumbnails
    show_and_save(viewer, args.out, 0, args.show, OUTPUT_LAYER)
    print(
        json.dumps(
            {
                "backend": args.backend,
                "support_slices": args.slices,
                "dice_liver": round(float(dice), 3),
                "segment_volume_s": round(seconds, 2),
                "status": widget.status.value,
                "out": str(args.out),
            }
        )
    )
    viewer.close()


if __name__ == "__main__":
    main()
