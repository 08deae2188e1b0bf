"""Cached LiteMedSAM image embeddings of 2D slices, with a leakage-free train/eval split.

Every cached slice is one ``.pt`` file under ``<root>/emb/`` holding the fp16 image embedding
``(256, 64, 64)``, the label slice ``(H, W)`` and the slice shape. The frozen image encoder runs
once per slice, in batches, under :func:`torch.inference_mode`.

Split (see :func:`training_keys` / :func:`evaluation_keys`):

* LiTS-117: training uses only the sub-volume ``z < 64`` (axial, coronal and sagittal slices of
  the crop); evaluation uses axial slices ``z >= 64``.
* Colin27/AAL: training targets are all AAL structures except :data:`AAL_HELDOUT` (slices along
  three axes); evaluation uses axial slices offset from the training ones and only the held-out
  structures as targets.

Corpus slices (``--data corpus``, the default) come from the training split of the corpus
(:mod:`fmseg.training.corpus_slices`): their entries also hold the record id, sampling group,
pixel spacing and label names/excluded values, so that targets need no corpus at load time.

Run ``python -m fmseg.training.embed_cache`` to fill the cache (``--data legacy`` for the
LiTS-117 + Colin27/AAL slices above).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..transforms import SliceFrame, intensity_window, prepare_slice
from .splits import HELD_OUT_AAL

DATA_DIR = Path("/work/shared/data")
CACHE_DIR = Path(__file__).resolve().parents[3] / ".cache" / "emb"
LITS_WINDOW = (-160.0, 240.0)
LITS_ZSPLIT = 64  # along array axis 2, unlike the corpus's LiTS split (axis 0, splits.py)
AAL_HELDOUT: tuple[int, ...] = HELD_OUT_AAL
MODEL_SIZE = 256
MIN_PX = 20


@dataclass(frozen=True)
class SliceKey:
    """One 2D slice of a dataset volume.

    Attributes:
        dataset: ``"lits"`` or ``"colin"``.
        axis: Array axis the slice is taken along (0 = x, 1 = y, 2 = z).
        index: Slice index along ``axis``.
        zmax: Crop the volume to ``z < zmax`` before slicing (None: no crop).
    """

    dataset: str
    axis: int
    index: int
    zmax: int | None = None

    @property
    def name(self) -> str:
        """File stem in the cache."""
        crop = "" if self.zmax is None else f"_z{self.zmax}"
        return f"{self.dataset}_a{self.axis}_{self.index:03d}{crop}"


@lru_cache(maxsize=2)
def load_dataset(
    dataset: str, data_dir: str = str(DATA_DIR)
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Image ``(X, Y, Z)``, integer labels ``(X, Y, Z)`` and intensity window of a dataset."""
    import nibabel as nib

    names = {
        "lits": ("lits117_ct.nii.gz", "lits117_labels.nii.gz"),
        "colin": ("colin27_ch2.nii.gz", "colin27_aal.nii.gz"),
    }[dataset]
    img = np.asarray(nib.load(Path(data_dir) / names[0]).dataobj, dtype=np.float32)
    lab = np.asarray(nib.load(Path(data_dir) / names[1]).dataobj).astype(np.int16)
    window = LITS_WINDOW if dataset == "lits" else intensity_window(img, None)
    return img, lab, window


def take(volume: np.ndarray, key: SliceKey) -> np.ndarray:
    """The ``(H, W)`` slice of a ``(X, Y, Z)`` volume named by ``key``."""
    if key.zmax is not None:
        volume = volume[:, :, : key.zmax]
    return np.take(volume, key.index, axis=key.axis)


def _range_with_labels(lab: np.ndarray, axis: int, step: int, offset: int = 0) -> list[int]:
    """Indices ``offset, offset + step, ...`` along ``axis`` whose slice has any label."""
    other = tuple(a for a in range(3) if a != axis)
    has = np.nonzero(lab.any(axis=other))[0]
    return [int(i) for i in has if (i - offset) % step == 0]


def training_keys(steps: tuple[int, int] = (2, 3), colin_step: int = 5) -> list[SliceKey]:
    """Training slices: LiTS ``z < 64`` (3 axes) and Colin27 along 3 axes (no evaluation slice).

    Args:
        steps: LiTS slice step for axial and for coronal/sagittal slices.
        colin_step: Colin27 slice step along every axis.
    """
    _, lits, _ = load_dataset("lits")
    crop = lits[:, :, :LITS_ZSPLIT] > 0
    keys = [SliceKey("lits", 2, i, LITS_ZSPLIT) for i in _range_with_labels(crop, 2, steps[0])]
    for axis in (0, 1):
        keys += [
            SliceKey("lits", axis, i, LITS_ZSPLIT)
            for i in _range_with_labels(crop, axis, steps[1], 1)
        ]
    _, aal, _ = load_dataset("colin")
    held = set(evaluation_keys())
    for axis in range(3):
        keys += [
            k
            for i in _range_with_labels(aal > 0, axis, colin_step)
            if (k := SliceKey("colin", axis, i)) not in held
        ]
    return keys


def evaluation_keys(lits_step: int = 2, colin_step: int = 6) -> list[SliceKey]:
    """Held-out slices: LiTS axial ``z >= 64``; Colin27 axial slices with held-out structures."""
    _, lits, _ = load_dataset("lits")
    zs = [z for z in _range_with_labels(lits > 0, 2, lits_step, 1) if z >= LITS_ZSPLIT]
    keys = [SliceKey("lits", 2, z) for z in zs]
    _, aal, _ = load_dataset("colin")
    held = np.isin(aal, AAL_HELDOUT)
    keys += [SliceKey("colin", 2, z) for z in _range_with_labels(held, 2, colin_step, 3)]
    return keys


def components(mask: np.ndarray, min_px: int) -> list[np.ndarray]:
    """The connected components of ``(H, W)`` ``mask`` with at least ``min_px`` pixels."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    return [lab == i for i in range(1, n + 1) if sizes[i] >= min_px]


def slice_targets(
    key: SliceKey, label: np.ndarray, heldout: bool, min_px: int = MIN_PX
) -> list[tuple[str, np.ndarray]]:
    """Segmentation targets ``(kind, (H, W) bool mask)`` of one label slice.

    Args:
        key: The slice.
        label: Its ``(H, W)`` labels.
        heldout: Evaluation targets (only :data:`AAL_HELDOUT` structures on Colin27) instead of
            training targets (all other structures).
        min_px: Smallest component kept.

    Returns:
        LiTS: ``"liver"`` (labels 1 and 2, when ``>= min_px`` pixels) and one ``"tumour"`` per
        2D connected component of label 2 with ``>= min_px`` pixels. Colin27: one ``"aal"``
        target per such component of each structure.
    """
    out: list[tuple[str, np.ndarray]] = []
    if key.dataset == "lits":
        liver = label > 0
        if liver.sum() >= min_px:
            out.append(("liver", liver))
        out += [("tumour", m) for m in components(label == 2, min_px)]
        return out
    for value in np.unique(label[label > 0]):
        if (int(value) in AAL_HELDOUT) == heldout:
            out += [("aal", m) for m in components(label == value, min_px)]
    return out


def cache_path(key: SliceKey, root: Path = CACHE_DIR) -> Path:
    """Where the embedding of ``key`` is stored."""
    return Path(root) / f"{key.name}.pt"


@dataclass(frozen=True)
class SliceInput:
    """What the encoder and the cache need of one slice.

    Attributes:
        x: ``(1, 3, S, S)`` model input in [0, 1].
        label: ``(H, W)`` int16 labels.
        meta: Extra entries stored with the embedding (e.g. ``spacing``; JSON-like values).
    """

    x: torch.Tensor
    label: np.ndarray
    meta: dict = field(default_factory=dict)


def legacy_input(key: SliceKey, size: int = MODEL_SIZE) -> SliceInput:
    """Model input and labels of a LiTS/Colin27 slice (square pixels, dataset window)."""
    img, lab, window = load_dataset(key.dataset)
    image = take(img, key)
    frame = SliceFrame.for_slice(image.shape, (1.0, 1.0), size)
    return SliceInput(prepare_slice(image, window, frame), take(lab, key).copy())


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def ensure_cached(
    keys: Iterable,
    encoder: torch.nn.Module,
    batch: int = 4,
    root: Path = CACHE_DIR,
    log: bool = True,
    inputs: Callable[..., SliceInput] = legacy_input,
) -> int:
    """Embed every key not yet in the cache; returns how many were computed.

    Args:
        keys: Slices to cache (:class:`SliceKey` or anything with a ``name``).
        encoder: The frozen image encoder ``(B, 3, S, S) -> (B, C, S/4, S/4)``; ``S`` is its
            ``img_size`` (256 for LiteMedSAM).
        batch: Slices per encoder call.
        root: Cache folder.
        log: Print progress.
        inputs: ``inputs(key, S) -> SliceInput`` (default: the LiTS/Colin27 slices).
    """
    todo = [k for k in keys if not cache_path(k, root).is_file()]
    Path(root).mkdir(parents=True, exist_ok=True)
    size = int(getattr(encoder, "img_size", MODEL_SIZE))
    t0, done = time.perf_counter(), 0
    for chunk in _batches(todo, batch):
        items = [inputs(k, size) for k in chunk]
        dev = next(encoder.parameters()).device
        with torch.inference_mode():
            feats = encoder(torch.cat([it.x for it in items]).to(dev)).half().cpu()
        for key, f, it in zip(chunk, feats, items, strict=True):
            entry = {"features": f.clone(), "label": torch.from_numpy(it.label)}
            entry |= {"shape": tuple(it.label.shape), "size": size, **it.meta}
            tmp = cache_path(key, root).with_suffix(".tmp")
            torch.save(entry, tmp)
            tmp.replace(cache_path(key, root))
        done += len(chunk)
        if log:
            dt = time.perf_counter() - t0
            print(f"embedded {done}/{len(todo)} ({dt / done:.2f} s/slice)", flush=True)
    return done


@dataclass(frozen=True)
class CachedSlice:
    """One cached slice.

    Attributes:
        key: Which slice.
        features: ``(1, 256, 64, 64)`` fp16 embedding.
        label: ``(H, W)`` int16 labels.
        frame: Geometry of the slice in the model input.
        meta: The entry's extra metadata (corpus slices: record, group, names, ...).
    """

    key: SliceKey
    features: torch.Tensor
    label: np.ndarray
    frame: SliceFrame
    meta: dict = field(default_factory=dict)


def load_cached(key, root: Path = CACHE_DIR) -> CachedSlice:
    """Read one cached slice (raises FileNotFoundError when it is not cached)."""
    d = torch.load(cache_path(key, root), map_location="cpu", weights_only=True)
    label = d.pop("label").numpy()
    features = d.pop("features")[None]
    d.pop("shape", None)
    # corpus entries store their pixel spacing: the frame must be the one they were embedded in
    spacing = tuple(d.get("spacing", (1.0, 1.0)))
    frame = SliceFrame.for_slice(label.shape, spacing, int(d.get("size", MODEL_SIZE)))
    return CachedSlice(key, features, label, frame, d)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    from .corpus_slices import SEED, STEP, SYNTH_PROB

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--data",
        choices=("corpus", "legacy"),
        default="corpus",
        help="corpus training split, or the LiTS-117 + Colin27/AAL slices",
    )
    p.add_argument(
        "--split",
        choices=("train", "eval", "all"),
        default="all",
        help="legacy only: the corpus has training slices only",
    )
    p.add_argument("--step", type=int, default=STEP, help="corpus: every k-th labelled slice")
    p.add_argument(
        "--synth-prob",
        type=float,
        default=SYNTH_PROB,
        help="corpus: share of real slices that also get a synthetic copy",
    )
    p.add_argument("--seed", type=int, default=SEED, help="corpus: seed of synthetic images")
    p.add_argument("--corpus", type=Path, default=None, help="corpus folder (default cache)")
    p.add_argument("--root", type=Path, default=CACHE_DIR, help="embedding cache folder")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--base-checkpoint",
        type=Path,
        default=None,
        help="LiteMedSAM tensors to use instead of the registry's package",
    )
    p.add_argument("--dry-run", action="store_true", help="only count the slices")
    return p.parse_args(argv)


def _keys(args: argparse.Namespace) -> tuple[list, Callable[..., SliceInput]]:
    """The slices to cache and how to make their inputs."""
    if args.data == "corpus":
        from .corpus_slices import count_by_group, from_corpus

        keys, slices = from_corpus(args.corpus, args.step, args.synth_prob, args.seed)
        print(f"corpus slices per group: {count_by_group(keys, slices)}", flush=True)
        return keys, slices
    keys = []
    if args.split in ("eval", "all"):
        keys += evaluation_keys()
    if args.split in ("train", "all"):
        keys += training_keys()
    return keys, legacy_input


def main(argv: list[str] | None = None) -> None:
    """Fill the embedding cache (corpus training slices, or the legacy splits)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    keys, inputs = _keys(args)
    todo = sum(not cache_path(k, args.root).is_file() for k in keys)
    print(f"{len(keys)} slices, {todo} to embed", flush=True)
    if args.dry_run or not todo:
        return
    from ..registry import load_model

    model = load_model("litemedsam", checkpoint=args.base_checkpoint, device=args.device)
    ensure_cached(keys, model.image_encoder, batch=args.batch, root=args.root, inputs=inputs)


if __name__ == "__main__":
    main()
