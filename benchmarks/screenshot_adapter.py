"""Screenshot of the Adapt widget on the sample CT: a LiteMedSAM adapter trained on five slices.

Run from the repository root under an X server (napari needs one to draw)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/screenshot_adapter.py

It opens napari with the shipped liver CT and an "annotations" layer holding the ground-truth
labels on a few axial slices only (the rest unlabelled, as a clinician would leave them), docks
fmseg (its Adapt tab) through the manifest, trains a real LiteMedSAM adapter (``spatial-adapter``
with the prompt-free head by default; decoder-side methods get a "boxes" Shapes layer with the
ground truth's box on every slice) for the liver (label 1), applies it to the whole volume,
shows a slice between two annotated ones, and saves ``docs/screenshot_adapter.png``. It prints
JSON: the slices used, training steps and time, best validation Dice, the Dice of the result on
the slices that were not annotated, and the time applying took.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import napari
import numpy as np
from screenshot_incontext import show_and_save, wait_until  # benchmarks/ is on sys.path

from fmseg.io import load_volume
from napari_fmseg._adapter_widget import OUTPUT_LAYER
from napari_fmseg._io import SAMPLE_DIR

REPO = Path(__file__).resolve().parents[1]


def _truth_boxes(mask: np.ndarray) -> list[np.ndarray]:
    """One ``(z, y, x)`` rectangle per slice: the bounding box of ``mask`` on that slice."""
    boxes = []
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        ys, xs = np.nonzero(mask[z])
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        boxes.append(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float))
    return boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot_adapter.png")
    parser.add_argument("--method", default="spatial-adapter")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--label", type=int, default=1, help="1 liver, 2 tumour")
    parser.add_argument("--slices", type=int, nargs="+", default=[6, 18, 30, 42, 54])
    parser.add_argument("--show", type=int, default=24, help="axial slice shown (napari index)")
    parser.add_argument("--apply", choices=["volume", "slice"], default="volume")
    args = parser.parse_args()

    truth = np.transpose(load_volume(SAMPLE_DIR / "sample_ct_labels.nii.gz").array)  # (z, y, x)
    sparse = np.zeros(truth.shape, np.int32)
    sparse[args.slices] = truth[args.slices]
    viewer = napari.Viewer(title="fmseg")
    viewer.window.resize(1600, 1000)
    viewer.open_sample("fmseg", "sample_ct")
    image = viewer.layers["sample_ct"]
    geometry = {"scale": image.scale, "translate": image.translate}
    annotations = viewer.add_labels(sparse, name="annotations", **geometry)
    _, dock = viewer.window.add_plugin_dock_widget("fmseg")
    widget = dock.show_tool("Adapt")
    widget._image.value, widget._annotations.value = image, annotations
    widget._label.value = args.label
    widget._method.value = args.method  # the widget picks the head that fits the method
    widget._steps.value = args.steps
    if not widget.add_pair():
        raise SystemExit(widget.status.value)

    widget.start()
    train_s = wait_until(lambda: not widget.busy)
    if widget.adapter is None:
        raise SystemExit(widget.status.value)
    if widget.adapter.head_kind == "box":
        widget._boxes.value = viewer.add_shapes(
            _truth_boxes(truth == args.label), shape_type="rectangle", name="boxes",
            edge_color="cyan", face_color="transparent", **geometry,
        )  # fmt: skip
    viewer.dims.set_current_step(0, args.show)
    widget.apply_volume() if args.apply == "volume" else widget.apply_slice()
    apply_s = wait_until(lambda: not widget.busy)
    if OUTPUT_LAYER not in viewer.layers:
        raise SystemExit(widget.status.value)
    run = np.arange(truth.shape[0]) if args.apply == "volume" else np.array([args.show])
    held_out = np.setdiff1d(run, args.slices)
    got = np.asarray(viewer.layers[OUTPUT_LAYER].data)[held_out] > 0
    want = truth[held_out] == args.label
    dice = 2 * (got & want).sum() / max(got.sum() + want.sum(), 1)
    status = widget.status.value
    annotations.visible = False  # the annotated slices are not the one shown
    show_and_save(viewer, args.out, 0, args.show, OUTPUT_LAYER)
    print(
        json.dumps(
            {
                "method": args.method,
                "head": widget.adapter.head_kind,
                "label": args.label,
                "annotated_slices": args.slices,
                "steps_run": widget.metrics["steps_run"],
                "best_val_dice": widget.metrics["best_val_dice"],
                "train_s": round(train_s, 1),
                "apply": args.apply,
                "apply_s": round(apply_s, 1),
                "dice_held_out_slices": round(float(dice), 3),
                "status": status,
                "out": str(args.out),
            }
        )
    )
    viewer.close()


if __name__ == "__main__":
    main()
