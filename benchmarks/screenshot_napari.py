"""Screenshot of the Segment widget at work on the sample CT, with the real LiteMedSAM weights.

Run from the repository root under an X server (napari needs one to draw)::

    xvfb-run -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/screenshot_napari.py

It opens napari with the shipped liver CT, docks fmseg (Segment tab) via the manifest,
segments the liver on a middle axial slice from a box around it (the box comes from the
sample's ground-truth labels, so the figure is reproducible), commits it as label 1, then
draws a second box around the largest tumour so that a live, uncommitted object is shown too,
and saves ``docs/screenshot_napari.png``. It prints JSON timings: model loading, embedding of
the slice in view (done in the background while the user draws), and box to mask as the user
feels it (with the background embedding of the other slices still running).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import napari
import numpy as np
from scipy import ndimage
from screenshot_incontext import wait_until as shared_wait_until  # benchmarks/ is on sys.path

from fmseg.io import load_volume
from napari_fmseg._io import SAMPLE_DIR

REPO = Path(__file__).resolve().parents[1]


wait_until = functools.partial(shared_wait_until, timeout=900.0)  # whole-volume embedding


def bbox(mask: np.ndarray, margin: int = 2) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` of a 2D mask, grown by ``margin`` pixels."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return (
        max(rows.min() - margin, 0),
        max(cols.min() - margin, 0),
        min(rows.max() + margin, h - 1),
        min(cols.max() + margin, w - 1),
    )


def rectangle(z: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Rectangle vertices ``(z, y, x)`` for a napari Shapes layer."""
    y0, x0, y1, x1 = box
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], dtype=float)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2D mask."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = ndimage.sum(mask, lab, index=range(1, n + 1))
    return lab == 1 + int(np.argmax(sizes))


def segment_box(viewer, widget, z: int, box: tuple[int, int, int, int]) -> float:
    """Draw a box on slice ``z`` and wait for the model's mask; returns the latency (s)."""
    widget.layers["box"].add_rectangles(rectangle(z, box))
    return wait_until(lambda: not widget.jobs.running and widget.layers["object"].data[z].any())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot_napari.png")
    parser.add_argument("--slice", type=int, default=32, help="axial slice (napari index)")
    parser.add_argument("--propagate", action="store_true", help="propagate the liver first")
    parser.add_argument(
        "--full", action="store_true", help="then wait for all slices and time a click alone"
    )
    args = parser.parse_args()

    truth = np.transpose(load_volume(SAMPLE_DIR / "sample_ct_labels.nii.gz").array)  # (z, y, x)
    viewer = napari.Viewer(title="fmseg")
    viewer.window.resize(1600, 1000)
    viewer.open_sample("fmseg", "sample_ct")
    _, dock = viewer.window.add_plugin_dock_widget("fmseg")
    widget = dock.show_tool("Segment")
    z = args.slice
    viewer.dims.set_current_step(0, z)

    t0 = time.monotonic()
    widget.start()
    times = {"start_s": wait_until(lambda: widget.session is not None)}
    # a user needs a few seconds to draw a box: by then the slice they look at is embedded
    times["current_slice_embedded_s"] = wait_until(lambda: widget.session.is_embedded(0, z))
    times["liver_box_to_mask_s"] = segment_box(viewer, widget, z, bbox(truth[z] > 0))
    if args.propagate:
        widget.propagate()
        times["propagate_s"] = wait_until(lambda: not widget.jobs.running)
    widget.commit()
    wait_until(lambda: not widget.jobs.running)
    widget._label.value = 2
    widget._overwrite.value = True
    tumour = largest_component(truth[z] == 2)
    times["tumour_box_to_mask_s"] = segment_box(viewer, widget, z, bbox(tumour))
    wait_until(lambda: True)
    viewer.screenshot(str(args.out), canvas_only=False)
    times["total_s"] = time.monotonic() - t0
    if args.full:
        times["all_slices_embedded_s"] = wait_until(lambda: not widget.embedding.busy)
        y, x = np.argwhere(tumour).mean(axis=0).round()
        widget.layers["points"].add([z, y, x])
        times["click_to_mask_idle_s"] = wait_until(lambda: not widget.jobs.running)
    widget.cancel()
    wait_until(lambda: not widget.busy)
    print(json.dumps({k: round(v, 2) for k, v in times.items()} | {"out": str(args.out)}))
    viewer.close()


if __name__ == "__main__":
    main()
