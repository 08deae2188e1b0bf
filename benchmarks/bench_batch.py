"""Throughput of ``fmseg batch`` with 1 and 2 Dask workers on one cohort; prints JSON.

Cohort: ``--cases`` copies of the napari sample CT (LiTS case 117, 128 x 128 x 64, int16 HU,
``napari_fmseg/data/sample_ct.nii.gz``), each with its own seeded noise (sd 5 HU) so that no
two cases are the same file, cut to ``--slices`` axial slices around the middle. Job: the real
LiteMedSAM (``litemedsam``) with one box per case, the liver's bounding box on the axial slice
where the liver is largest (from ``sample_ct_labels.nii.gz``), propagated through the volume,
window (-160, 240).

Measured in one run, in this order: a ``LocalCluster`` of 1 worker process, then one of 2
(1 thread each, ``--torch-threads`` torch / ONNX Runtime threads per worker). Each timing
starts when the cluster is up and ends when the last case is written, so it includes each
worker loading the model once. The ONNX export of the encoder is made beforehand, so neither
run pays it. Reported: seconds, cases per minute, the speed-up (2 workers / 1), the load
average before and after, and the CPU count.

Usage (smoke: ``--cases 2 --slices 8``)::

    nice -n 10 .venv/bin/python benchmarks/bench_batch.py [--cases 8] [--slices 64] \
        [--out benchmarks/results/batch.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "napari_fmseg" / "data" / "sample_ct.nii.gz"
LABELS = REPO / "napari_fmseg" / "data" / "sample_ct_labels.nii.gz"
WINDOW = (-160.0, 240.0)


def make_cohort(folder: Path, cases: int, slices: int) -> Path:
    """Write the cases and their box CSV into ``folder``; returns the CSV path."""
    from fmseg.io import load_volume, save_volume

    ct, lab = load_volume(SAMPLE), load_volume(LABELS)
    n = ct.array.shape[2]
    start = max(0, (n - slices) // 2)
    img = ct.array[:, :, start : start + slices].astype(np.float32)
    liver = lab.array[:, :, start : start + slices] > 0
    z = int(np.argmax(liver.sum(axis=(0, 1))))
    a, b = np.nonzero(liver[:, :, z])
    affine = ct.affine.copy()
    affine[:3, 3] += affine[:3, 2] * start
    rows = []
    for i in range(cases):
        noisy = img + np.random.default_rng(i).normal(0, 5, img.shape).astype(np.float32)
        save_volume(folder / f"case{i:02d}.nii.gz", np.rint(noisy), affine)
        rows.append(f"case{i:02d},{z},{a.min()},{b.min()},{a.max()},{b.max()},1\n")
    box_file = folder.parent / "boxes.csv"
    box_file.write_text("case,slice,a0,b0,a1,b1,label\n" + "".join(rows))
    return box_file


def timed_run(folder: Path, job, out: Path, workers: int) -> dict:
    """One cohort on a fresh local cluster of ``workers`` processes; the run's numbers."""
    from distributed import Client, LocalCluster

    from fmseg.batch import run

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        t0 = time.perf_counter()
        summary = run(folder, job, out, scheduler=client, resume=False)
        seconds = time.perf_counter() - t0
    counts = summary.counts()
    if counts["done"] != len(summary.results):
        raise RuntimeError(f"{workers} worker(s): {summary.describe()}: {summary.failed()[0]}")
    per_case = [r.seconds for r in summary.results]
    out = {
        "workers": workers,
        "seconds": round(seconds, 2),
        "cases_per_minute": round(60 * len(per_case) / seconds, 3),
        "case_seconds_median": round(float(np.median(per_case)), 2),
    }
    print(json.dumps(out), file=sys.stderr, flush=True)  # partial results survive a stop
    return out


def main() -> None:
    """Run both configurations and print (and optionally write) the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()

    from fmseg.batch import JobSpec
    from fmseg.interactive.accel import export_onnx
    from fmseg.registry import load_model

    export_onnx(load_model("litemedsam", device="cpu").image_encoder)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cohort"
        folder.mkdir()
        box_file = make_cohort(folder, args.cases, args.slices)
        job = JobSpec("boxes", boxes=str(box_file), propagate=True, window=WINDOW, device="cpu",
                      torch_threads=args.torch_threads)  # fmt: skip
        runs = [timed_run(folder, job, Path(tmp) / f"out{w}", w) for w in (1, 2)]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cases": args.cases,
        "slices": args.slices,
        "model": "litemedsam",
        "torch_threads_per_worker": args.torch_threads,
        "runs": runs,
        "speedup_2_over_1": round(runs[0]["seconds"] / runs[1]["seconds"], 3),
        "target_speedup": 1.6,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
