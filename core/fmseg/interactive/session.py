"""The one stateful object a front end drives: volume, embeddings, prompts, masks, undo."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..progress import Progress, Work
from ..registry import ModelLoader, get_spec, load_model
from ..validation import check_label_value, check_volume
from ..weights import sha256_of
from ..window import Window, WindowLike
from .cache import EmbeddingCache, array_digest
from .history import History, SessionHistory
from .predictor import Prediction, SamPredictor, SliceEmbedding
from .prompts import Box, Point, Prompts
from .propagation import PropagationResult, PropagationSettings, propagate_iter
from .refine import decode_prompts
from .scribbles import scribble_points

if TYPE_CHECKING:
    from ..adapters.bases import AdaptedModel

SliceKey = tuple[int, int]  # (axis, index)


def _box_head_net(adapted: AdaptedModel) -> nn.Module:
    """The base SAM model with a box-head adapter merged in (prompt-free heads refused)."""
    from ..adapters.methods import merge_adapters

    if adapted.head_kind != "box":
        raise ValueError(
            f"the adapter on '{adapted.base_id}' has a prompt-free head: apply it to whole "
            "slices/volumes (fmseg segment --adapter without prompts, or fmseg.adapters.predict)"
        )
    return merge_adapters(adapted.net).eval()


def registry_predictor(
    name: str,
    checkpoint: str | None = None,
    device: str | None = None,
    load: ModelLoader = load_model,
) -> SamPredictor:
    """A :class:`SamPredictor` on the registered model ``name``."""
    return SamPredictor(
        load(name, checkpoint=checkpoint, device=device), get_spec(name).normalisation
    )


def _point_predictor(
    name: str | None, device: str | None, load: ModelLoader
) -> SamPredictor | None:
    if name is None:
        return None
    try:
        return registry_predictor(name, device=device, load=load)
    except (FileNotFoundError, RuntimeError):
        return None  # clicks then fall back to the box model


class Session(SessionHistory):
    """Interactive segmentation of one 3D volume (2D images are volumes of one slice).

    The session works in array index space. A slice is ``np.take(volume, index, axis)``; its
    prompts use ``x`` = column and ``y`` = row of that 2D array. The working object lives in
    :attr:`mask`; :meth:`commit` copies it into :attr:`labels` under a label value. Every
    interaction is one step of :attr:`history` (:meth:`undo`, :meth:`redo`); undoing a commit
    restores the labels and the object it committed. A slice that already holds part of the
    object when it is first prompted (a start mask, a propagated result) keeps it as its base:
    clicks edit the base (see :func:`~fmseg.interactive.refine.decode_prompts`).
    :meth:`from_registry` builds the predictors from model names.

    Args:
        volume: ``(D0, D1, D2)`` or ``(H, W)`` intensities (any real dtype, finite).
        predictor: The box predictor (its image encoder embeds every slice).
        point_predictor: The click predictor sharing that encoder's embeddings, or None
            (clicks then go to ``predictor``).
        spacing: Voxel size per axis, used to square anisotropic slices for the model.
        window: Intensity window: a :class:`~fmseg.window.Window`, an explicit
            ``(low, high)``, or None (the default 0.5-99.5 percentiles). Resolved once;
            :attr:`window` holds the range.
        cache: Embedding cache (a bounded in-memory one by default).
        name: Names the predictor's weights in cache keys (sessions sharing a cache must
            not share a name across weights); None: unique to this predictor object.
    """

    def __init__(
        self,
        volume: np.ndarray,
        predictor: SamPredictor,
        point_predictor: SamPredictor | None = None,
        *,
        spacing: Iterable[float] | None = None,
        window: WindowLike = None,
        cache: EmbeddingCache | None = None,
        name: str | None = None,
    ) -> None:
        volume = check_volume(volume)
        self.volume = volume[None] if volume.ndim == 2 else volume
        self.spacing = tuple(float(s) for s in (spacing or (1.0,) * self.volume.ndim))
        if len(self.spacing) == 2:
            self.spacing = (1.0, *self.spacing)
        self.model_name = name or f"predictor-{id(predictor):x}"
        self.window_policy = Window.of(window)
        self.window = self.window_policy.resolve(self.volume)
        self.predictor = predictor
        self.point_predictor = point_predictor
        self.cache = cache if cache is not None else EmbeddingCache()  # an empty one is falsy
        self._digest = array_digest(self.volume)
        self.mask = np.zeros(self.volume.shape, dtype=bool)
        self.labels = np.zeros(self.volume.shape, dtype=np.uint16)
        self.prompts: dict[SliceKey, Prompts] = {}
        self.last: dict[SliceKey, Prediction] = {}
        self.bases: dict[SliceKey, np.ndarray] = {}  # never edited in place (history shares)
        self.history = History()

    @classmethod
    def from_registry(
        cls,
        volume: np.ndarray,
        model: str = "litemedsam",
        point_model: str | None = "auto",
        *,
        spacing: Iterable[float] | None = None,
        window: WindowLike = None,
        device: str | None = None,
        cache: EmbeddingCache | None = None,
        checkpoint: str | None = None,
        adapter: str | None = None,
        load: ModelLoader = load_model,
    ) -> Session:
        """A session on registered models.

        Args:
            volume: As for :class:`Session`.
            model: Registry name of the box model.
            point_model: Registry name of the click model (shares the image encoder),
                ``"auto"`` for the box model's registered ``click_model``, or None.
            window: As for :class:`Session`; None with ``adapter``: the adapter's training
                window.
            device: ``"cpu"``, ``"cuda"`` or None (CUDA when available).
            checkpoint: Local checkpoint for models without bundled weights.
            adapter: An adapter file (``fmseg adapt``) trained on ``model`` with the box head;
                its updates are merged into the box model. Refused if trained on another base.
            spacing: As for :class:`Session`.
            cache: As for :class:`Session`.
            load: How networks are built (:func:`~fmseg.registry.load_tiny` in tests).
        """
        if point_model == "auto":
            point_model = get_spec(model).click_model
        points = _point_predictor(point_model, device, load)
        if adapter is None:
            box = registry_predictor(model, checkpoint, device, load)
            return cls(volume, box, points, spacing=spacing, window=window, cache=cache, name=model)
        from ..adapters.api import load_adapter

        adapted = load_adapter(adapter, model, device, checkpoint, load)
        name = f"{model}+adapter:{sha256_of(adapter)[:16]}"
        return cls.from_adapter(
            volume, adapted, points, spacing=spacing, window=window, cache=cache, name=name
        )

    @classmethod
    def from_adapter(
        cls,
        volume: np.ndarray,
        adapted: AdaptedModel,
        point_predictor: SamPredictor | None = None,
        *,
        spacing: Iterable[float] | None = None,
        window: WindowLike = None,
        cache: EmbeddingCache | None = None,
        name: str | None = None,
    ) -> Session:
        """A session on a loaded box-head adapter merged into its base model.

        ``window`` None means the adapter's training window; an explicit one overrides it.
        """
        net = _box_head_net(adapted)
        predictor = SamPredictor(net, get_spec(adapted.base_id).normalisation)
        window = adapted.window if window is None else window
        return cls(
            volume, predictor, point_predictor, spacing=spacing, window=window, cache=cache,
            name=name or f"{adapted.base_id}+adapter-{id(adapted):x}",
        )  # fmt: skip

    # -- slices and embeddings ------------------------------------------------------------
    def n_slices(self, axis: int) -> int:
        """Number of slices along ``axis``."""
        return self.volume.shape[axis]

    def slice_image(self, axis: int, index: int) -> np.ndarray:
        """The ``(H, W)`` intensity slice."""
        self._check_slice(axis, index)
        return np.take(self.volume, index, axis=axis)

    def slice_spacing(self, axis: int) -> tuple[float, float]:
        """``(row, column)`` pixel spacing of slices along ``axis``."""
        rest = [s for a, s in enumerate(self.spacing) if a != axis]
        return rest[0], rest[1]

    def _check_slice(self, axis: int, index: int) -> None:
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        if not 0 <= index < self.volume.shape[axis]:
            raise IndexError(f"slice {index} is outside 0..{self.volume.shape[axis] - 1}")

    def _key(self, axis: int, index: int) -> str:
        lo, hi = self.window
        return f"{self._digest}/{self.model_name}/{axis}/{index}/{lo:.3f}:{hi:.3f}"

    def is_embedded(self, axis: int, index: int) -> bool:
        """True when the slice embedding is cached (a prompt will not wait for the encoder)."""
        return self._key(axis, index) in self.cache

    def embedding(self, axis: int, index: int) -> SliceEmbedding:
        """The cached embedding of a slice, computing it if needed (~0.5-2 s on CPU)."""
        image = self.slice_image(axis, index)
        frame = self.predictor.frame(image.shape, self.slice_spacing(axis))
        key = self._key(axis, index)
        feats = self.cache.get(key)
        if feats is None:
            emb = self.predictor.embed(image, self.window, self.slice_spacing(axis))
            self.cache.put(key, emb.features)
            return emb
        return SliceEmbedding(feats.to(self.predictor.device), frame)

    def embed_slices(self, axis: int, indices: list[int]) -> None:
        """Embed slices ``indices`` along ``axis`` in one encoder call into the cache."""
        spacing = self.slice_spacing(axis)
        inputs = [
            self.predictor.preprocess(self.slice_image(axis, i), self.window, spacing)[0]
            for i in indices
        ]
        feats = self.predictor.embed_batch(torch.cat(inputs))
        for i, f in zip(indices, feats, strict=True):
            self.cache.put(self._key(axis, i), f[None].clone())

    def embed_volume_iter(
        self, axis: int, indices: Iterable[int] | None = None, batch: int = 2
    ) -> Work[int]:
        """Embed many slices in batches, yielding progress; returns how many were computed."""
        todo = [
            i
            for i in (indices if indices is not None else range(self.n_slices(axis)))
            if not self.is_embedded(axis, i)
        ]
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            self.embed_slices(axis, chunk)
            yield Progress(
                start + len(chunk), len(todo), f"embedded {start + len(chunk)}/{len(todo)} slices"
            )
        return len(todo)

    # -- prompting ------------------------------------------------------------------------
    def add_point(self, axis: int, index: int, x: float, y: float, positive: bool = True):
        """Add a click and re-segment the slice; returns the ``(H, W)`` mask."""
        old = self.prompts.get((axis, index), Prompts())
        return self.set_prompts(axis, index, old.with_point(Point(x, y, positive)), "click")

    def add_scribble(self, axis: int, index: int, vertices, positive: bool = True):
        """Add a scribble (``(V, 2)`` ``(x, y)`` path) as clicks along it; returns the mask."""
        old = self.prompts.get((axis, index), Prompts())
        new = old.with_points(scribble_points(vertices, positive))
        return self.set_prompts(axis, index, new, "scribble")

    def set_lasso(self, axis: int, index: int, vertices):
        """Set (None: remove) the slice's lasso (``(V, 2)`` ``(x, y)`` polygon); the mask."""
        old = self.prompts.get((axis, index), Prompts())
        return self.set_prompts(axis, index, old.with_lasso(vertices), "lasso")

    def set_box(self, axis: int, index: int, box: Box | None):
        """Set (or remove) the slice's box and re-segment; returns the ``(H, W)`` mask."""
        old = self.prompts.get((axis, index), Prompts())
        return self.set_prompts(axis, index, old.with_box(box), "box")

    def set_prompts(
        self, axis: int, index: int, prompts: Prompts, name: str = "prompts"
    ) -> np.ndarray:
        """Replace all prompts of a slice (front ends syncing their layers) and re-segment.

        One undo step named ``name``. The slice's mask when it is first prompted becomes its
        base (clicks edit it; a box or lasso replaces it).
        """
        key = (axis, index)
        self._check_slice(axis, index)
        with self.history.record(self, name, key):
            state = self.history_state()
            if self.prompts.get(key, Prompts()).empty and key not in self.bases:
                if (current := np.take(self.mask, index, axis=axis)).any():
                    self.bases[key] = current.copy()
            self.prompts[key] = prompts
            try:
                return self.segment_slice(axis, index)
            except Exception:
                self.restore_history_state(state)  # a refused prompt changes nothing
                raise

    def segment_slice(self, axis: int, index: int) -> np.ndarray:
        """Run the decoder on the slice's prompts and store the result in :attr:`mask`."""
        key = (axis, index)
        prompts = self.prompts.get(key, Prompts())
        self.last.pop(key, None)
        if prompts.empty:
            self._write_slice(self.mask, axis, index, self.bases.get(key, False))
            return np.take(self.mask, index, axis=axis)
        emb = self.embedding(axis, index)
        pred, mask = decode_prompts(
            self.predictor, self.point_predictor, emb, prompts, self.bases.get(key)
        )
        if pred is not None:
            self.last[key] = pred
        self._write_slice(self.mask, axis, index, mask)
        return mask

    def clear_prompts(self, axis: int | None = None, index: int | None = None) -> None:
        """Forget the prompts of one slice, or of all; their masks go back to their bases."""
        keys = [k for k in self.prompts if axis is None or k == (axis, index)]
        region = None if axis is None else (axis, index)
        with self.history.record(self, "clear prompts", region):
            for k in keys:
                del self.prompts[k]
                self.last.pop(k, None)
                self._write_slice(self.mask, k[0], k[1], self.bases.get(k, False))

    def reset_object(self) -> None:
        """Start a new object: drop all prompts and the working mask."""
        with self.history.record(self, "clear object"):
            self.prompts.clear()
            self.last.clear()
            self.bases.clear()
            self.mask[:] = False

    # -- start from a mask ----------------------------------------------------------------
    def set_working_mask(
        self, mask: np.ndarray, axis: int | None = None, index: int | None = None
    ) -> int:
        """Make ``mask`` the working object (a label, an in-context or adapter result).

        Args:
            mask: A volume-shaped mask, or with ``axis`` and ``index`` one slice's ``(H, W)``.
            axis: Axis of the slice ``mask`` replaces; None: the whole object.
            index: Index of that slice.

        Returns:
            Voxels in the new working object. Prompts of the replaced slices are dropped; the
            mask is their base, so clicks edit it. One undo step.
        """
        mask = np.asarray(mask, dtype=bool)
        if axis is not None:
            self._check_slice(axis, index)
        want = self.mask.shape if axis is None else np.take(self.mask, 0, axis=axis).shape
        if mask.shape != want:
            raise ValueError(f"the start mask has shape {mask.shape}, expected {tuple(want)}")
        region = None if axis is None else (axis, index)
        with self.history.record(self, "start from mask", region):
            keys = [k for k in self.prompts if axis is None or k == (axis, index)]
            for k in keys:
                del self.prompts[k]
                self.last.pop(k, None)
            self.bases = {k: v for k, v in self.bases.items() if axis is not None and k != region}
            if axis is None:
                self.mask[...] = mask
            else:
                self._write_slice(self.mask, axis, index, mask)
        return int(self.mask.sum())

    def start_from_label(self, label: int) -> int:
        """Lift label ``label`` out of :attr:`labels` into the working object (one undo step).

        Clicks then edit it; commit writes it back. Returns its voxel count.
        """
        label = check_label_value(label, self.labels.dtype)
        where = self.labels == label
        if not where.any():
            raise ValueError(f"label {label} is not in the label volume")
        with self.history.record(self, f"start from label {label}", labels=True):
            self.set_working_mask(where)
            self.labels[where] = 0
        return int(where.sum())

    @staticmethod
    def _write_slice(target: np.ndarray, axis: int, index: int, value) -> None:
        idx = [slice(None)] * target.ndim
        idx[axis] = index
        target[tuple(idx)] = value

    def propagate_iter(
        self, axis: int, index: int, settings: PropagationSettings | None = None
    ) -> Work[PropagationResult]:
        """Propagate the working mask of slice ``index`` through the volume (generator).

        Slices prompted along ``axis`` are anchors. See
        :func:`fmseg.interactive.propagation.propagate_iter`.
        """
        anchors = {i for (a, i), p in self.prompts.items() if a == axis and not p.empty}

        def segment(i: int, box: Box) -> np.ndarray:
            return self.predictor.predict(self.embedding(axis, i), Prompts(box=box)).mask()

        masks = np.moveaxis(self.mask, axis, 0)  # a view: propagation writes into self.mask
        with self.history.record(self, "propagate"):  # kept when cancelled: the slices done
            return (yield from propagate_iter(masks, index, segment, anchors, settings))

    # -- labels ---------------------------------------------------------------------------
    def commit(self, label: int, overwrite: bool = False) -> int:
        """Write the working mask into :attr:`labels` as ``label``; returns voxels written.

        Voxels that already carry another label are kept unless ``overwrite`` is True.
        Then a new object starts; :meth:`undo` restores the labels and this object.
        """
        label = check_label_value(label, self.labels.dtype)
        target = self.mask.copy() if overwrite else self.mask & (self.labels == 0)
        with self.history.record(self, f"commit label {label}", labels=True):
            self.labels[target] = label
            self.reset_object()
        return int(np.count_nonzero(target))
