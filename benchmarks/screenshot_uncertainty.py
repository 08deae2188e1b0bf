"""Screenshot of the Uncertainty widget on the sample CT: K candidates, their disagreement map.

Run from the repository root under an X server (napari needs one to draw)::

    xvfb-run -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/screenshot_uncertainty.py

It opens napari with the shipped liver CT and its ground-truth labels (as the clinician's
"annotations" layer), docks fmseg through the plugin manifest, adds a few axial slices of
the liver (label 1) to the support set, samples the whole volume (``tyche-small``, K = 8 and
three supports by default: the case a user reported, where the entropy made the whole liver
glow), shows the default map (disagreement, transparent at 0 bits) over the CT on a slice
between two supports, and saves ``docs/screenshot_uncertainty.png``. It prints JSON: the
slices used, the time sampling took, the Dice of the mean > 0.5 against the liver, and for
both maps the mean (bits) near the liver's boundary, inside and away from it, and the
fraction of the liver's interior above 0.5 bit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from screenshot_incontext import (  # benchmarks/ is on sys.path
    liver_supports,
    show_and_save,
    wait_until,
)

from fmseg import metrics as M
from napari_fmseg._uncertainty_widget import DISAGREEMENT, MEAN, SAMPLES, TOTAL

REPO = Path(__file__).resolve().parents[1]


def map_summary(heat: np.ndarray, liver: np.ndarray, band: int = 2) -> dict[str, float]:
    """A map's mean (bits) near the liver's surface, inside and outside; interior > 0.5 bit.

    Near: within ``band`` voxels in-plane. Interior: more than 10 pixels in-plane from the
    surface (:func:`fmseg.metrics.interior`).
    """
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)  # axial neighbours only
    grown = ndimage.binary_dilation(liver, plane, iterations=band)
    shrunk = ndimage.binary_erosion(liver, plane, iterations=band)
    far = ndimage.binary_dilation(liver, plane, iterations=4 * band)
    return {
        "boundary": round(float(heat[grown & ~shrunk].mean()), 3),
        "inside": round(float(heat[ndimage.binary_erosion(shrunk, plane, 2)].mean()), 3),
        "outside": round(float(heat[~far].mean()), 3),
        "interior_above_half_bit": round(M.fraction_above(heat, M.interior(liver, 10)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot_uncertainty.png")
    parser.add_argument("--sampler", default="tyche-small")
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--slices", type=int, nargs="+", default=[4, 32, 60])
    parser.add_argument("--map", default="disagreement", choices=["disagreement", "total"])
    parser.add_argument("--show", type=int, default=11, help="axial slice shown (napari index)")
    args = parser.parse_args()

    viewer, widget, truth = liver_supports("Uncertainty", args.slices)
    widget._sampler_name.value = args.sampler
    widget._k.value = args.k

    t0 = time.monotonic()
    widget.sample_volume()
    wait_until(lambda: not widget.busy)
    seconds = time.monotonic() - t0
    if DISAGREEMENT not in viewer.layers:
        raise SystemExit(widget.status.value)
    liver = truth == 1
    got = np.asarray(viewer.layers[MEAN].data) > 0.5
    dice = 2 * (got & liver).sum() / (got.sum() + liver.sum())
    viewer.layers["annotations"].visible = False  # the supports are in the thumbnails
    widget._map.value = args.map
    shown = DISAGREEMENT if args.map == "disagreement" else TOTAL
    show_and_save(viewer, args.out, 1, args.show, shown)  # dims axis 0 is the K slider
    print(
        json.dumps(
            {
                "sampler": args.sampler,
                "k": args.k,
                "samples_shape": list(viewer.layers[SAMPLES].data.shape),
                "support_slices": args.slices,
                "sample_volume_s": round(seconds, 2),
                "dice_mean_liver": round(float(dice), 3),
                **{
                    name: map_summary(np.asarray(viewer.layers[name].data), liver)
                    for name in (DISAGREEMENT, TOTAL)
                },
                "legend": widget.legend.value,
                "diversity": widget.diversity.value,
                "status": widget.status.value,
                "out": str(args.out),
            }
        )
    )
    viewer.close()


if __name__ == "__main__":
    main()
