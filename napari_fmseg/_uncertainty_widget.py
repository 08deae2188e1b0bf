"""The **Uncertainty** dock widget: several plausible masks per query, and where they disagree.

It is the :class:`~._incontext_widget.InContextWidget` (the same image, annotations, label
value, slicing axis and support-set controls, and the same worker, undo and cancel) with the
backend swapped for a *sampler* of :data:`fmseg.incontext.SAMPLERS`: a Tyche network, or
``<backend>+tta`` (K runs on perturbed inputs and support subsets). A run fills three Image
layers: ``samples`` (the ``(K, Z, Y, X)`` candidate probabilities; napari gives a slider over
K), ``mean`` and ``entropy`` (a heat map in bits, 0 where the candidates agree). The clinician
commits one candidate, or the mean above a threshold, into the "uncertainty result" Labels
layer, undoably; the annotations layer is only read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from napari.layers import Image, Labels

from fmseg.incontext import SAMPLERS, SupportSet, build_sampler, sample_volume_iter
from fmseg.progress import Progress, Work
from fmseg.uncertainty import diversity, entropy, mean_probability
from fmseg.weights import WeightsError

from . import _layers as L
from ._incontext_widget import OUTPUT_LAYER as INCONTEXT_LAYER
from ._incontext_widget import InContextWidget, Region, _source, _window

if TYPE_CHECKING:
    import napari

    from fmseg.incontext import AugmentedSampler, TycheBackend

    Sampler = TycheBackend | AugmentedSampler

OUTPUT_LAYER = "uncertainty result"
SAMPLES, MEAN, ENTROPY = "samples", "mean", "entropy"
_META = "fmseg_uncertainty"  # samples layer metadata: source, axis, sampled slices
_STYLE = {  # black is transparent with additive blending: the image shows through
    SAMPLES: {"colormap": "cyan", "visible": False},
    MEAN: {"colormap": "magma", "visible": False},
    ENTROPY: {"colormap": "inferno", "opacity": 0.8},
}
_ROWS = (
    (("Sample slice", "sample_slice"), ("Sample volume", "sample_volume")),
    (("Commit candidate k", "commit_candidate"), ("Commit mean > t", "commit_mean")),
)


class SamplerUnavailable(Exception):
    """A sampler whose weights cannot be loaded (the message suggests another sampler)."""


def stack_geometry(image: Image) -> dict[str, Any]:
    """Keyword arguments placing a ``(K, *image.shape)`` stack on ``image`` (K leading)."""
    g = L.geometry(image)

    def lead(matrix: np.ndarray) -> np.ndarray:  # identity on the new leading axis
        out = np.eye(len(matrix) + 1)
        out[1:, 1:] = matrix
        return out

    shear = np.asarray(g["shear"], float)  # upper-triangular entries, or a triangular matrix
    n = image.ndim
    return {
        "scale": (1.0, *g["scale"]),
        "translate": (0.0, *g["translate"]),
        "rotate": lead(g["rotate"]),
        "shear": lead(shear) if shear.ndim == 2 else np.concatenate([np.zeros(n), shear]),
        "affine": lead(g["affine"]),
    }


def _sample_work(
    get_sampler: Callable[[], Sampler],
    support: SupportSet,
    volume: np.ndarray,
    region: Region,
    **kwargs: Any,
) -> Work[tuple[Sampler, np.ndarray, np.ndarray, np.ndarray]]:
    """Build (or reuse) the sampler, sample, summarise ``region``: runs in the worker thread.

    Returns:
        The sampler, the ``(K, *volume.shape)`` samples, their mean and entropy (0 outside
        ``region``).
    """
    yield Progress(0, 0, "loading the sampler")
    try:
        sampler = get_sampler()
        samples = yield from sample_volume_iter(sampler, support, volume, **kwargs)
    except WeightsError as exc:
        advice = "choose another sampler, e.g. interpolation+tta, or install the weights"
        raise SamplerUnavailable(f"{exc} ({advice})") from None
    yield Progress(0, 0, "mean and entropy")
    mean, ent = np.zeros(volume.shape, np.float32), np.zeros(volume.shape, np.float32)
    part = samples[(slice(None), *region)]
    mean[region], ent[region] = mean_probability(part), entropy(part)
    return sampler, samples, mean, ent


class UncertaintyWidget(InContextWidget):
    """K plausible segmentations of the chosen image from a support set, and their spread.

    Args:
        viewer: The napari viewer (npe2 passes it).
        tiny: Use tiny random-weight networks (tests and demos without weights).
        sampler_factory: Builds a sampler, ``factory(name, k=k)``; defaults to
            :func:`fmseg.incontext.build_sampler`.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        tiny: bool = False,
        sampler_factory: Callable[..., Sampler] | None = None,
    ) -> None:
        super().__init__(viewer, tiny=tiny)
        self._sampler_factory = sampler_factory or functools.partial(build_sampler, tiny=tiny)
        self._sampler: tuple[tuple[str, int], Sampler] | None = None  # the last one built

    def _build(self) -> None:
        super()._build()
        at = self.index(self._backend_name)
        del self[at : at + 3]  # In-context's backend, ensemble and Segment buttons
        self._sampler_name = mw.ComboBox(
            label="sampler", choices=list(SAMPLERS), value="tyche-small"
        )
        self._sampler_name.tooltip = "\n".join(f"{k}: {v}" for k, v in SAMPLERS.items())
        self._k = mw.SpinBox(label="K (candidates)", min=2, max=16, value=8)
        self.diversity = mw.Label(label="diversity", value="")  # public: tests read it
        self.diversity.tooltip = "mean pairwise 1 - Dice of the current slice's candidates"
        self._candidate = mw.SpinBox(label="candidate k", min=0, max=7, value=0)
        self._candidate.tooltip = f"index on the K slider of '{SAMPLES}' (from 0)"
        self._threshold = mw.FloatSpinBox(
            label="mean threshold t", min=0.01, max=0.99, step=0.05, value=0.5
        )
        self._value = mw.SpinBox(label="commit as label", min=1, max=65535, value=1)
        self._label.changed.connect(lambda v: v and setattr(self._value, "value", v))
        self._whole = mw.CheckBox(label="whole volume", value=False)
        self._whole.tooltip = "commit every sampled slice (else the current slice only)"
        rows = [self._row(r) for r in _ROWS]
        new = [self._sampler_name, self._k, rows[0], self.diversity, self._candidate]
        for i, w in enumerate([*new, self._threshold, self._value, self._whole, rows[1]]):
            self.insert(at + i, w)
        self.status.value = "Annotate slices, add them to the support set, then sample."
        self._viewer.dims.events.current_step.connect(self.update_diversity)
        self._axis.changed.connect(self.update_diversity)

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [c for c in super()._image_choices() if c[0] not in _STYLE]

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        mine = (OUTPUT_LAYER, INCONTEXT_LAYER)
        return [c for c in super()._labels_choices() if c[0] not in mine]

    def sample_slice(self) -> None:
        """Draw K candidates for the current slice along the slicing axis (in a worker)."""
        self._segment(whole=False)

    def sample_volume(self) -> None:
        """Draw K candidates for every slice along the slicing axis (in a worker)."""
        self._segment(whole=True)

    def _segment(self, whole: bool) -> None:
        if (ctx := self._run_context(whole)) is None:
            return
        image, value, axis, index, region = ctx
        key = (str(self._sampler_name.value), int(self._k.value))
        work = _sample_work(
            functools.partial(self._get_sampler, key),
            SupportSet(list(self.support.examples), dict(self.support.names)),  # a snapshot
            np.asarray(image.data),
            tuple(region),
            axis=axis,
            window=_window(image),
            label=value or None,
            slices=None if whole else [index],
            source=_source(image),
            batch=self.batch,
        )
        name = "sample volume" if whole else f"sample slice {index}"
        self._say(f"{name}: {key[0]}, K = {key[1]} ...")
        sampled = range(image.data.shape[axis]) if whole else [index]
        self._launch(work, name, functools.partial(self._on_samples, image, axis, sampled, key))

    def _get_sampler(self, key: tuple[str, int]) -> Sampler:
        """The cached sampler for ``key``, or a new one (called in the worker)."""
        cached = self._sampler
        if cached is not None and cached[0] == key:
            return cached[1]
        return self._sampler_factory(key[0], k=key[1])

    def _find(self, name: str) -> Any:
        return next((x for x in self._viewer.layers if x.name == name), None)

    def _on_samples(
        self, image: Image, axis: int, sampled: Any, key: tuple[str, int], out: tuple
    ) -> None:
        """Put samples, mean and entropy into their layers (GUI thread)."""
        sampler, samples, mean, ent = out
        self._sampler = (key, sampler)
        if image not in self._viewer.layers or image.data.shape != mean.shape:
            self._error("the image changed while sampling: result dropped")
            return
        if taken := [n for n in _STYLE if not isinstance(self._find(n), Image | None)]:
            self._error(f"a layer named '{taken[0]}' is not an image: rename it (result dropped)")
            return
        old = self._find(SAMPLES)
        meta = dict(old.metadata.get(_META, {})) if old is not None else {}
        record = {"source": _source(image), "axis": axis}
        keep = (  # a slice added to earlier samples of this image, axis and K
            len(sampled) < image.data.shape[axis]
            and old is not None
            and old.data.shape == samples.shape
            and all(meta.get(k) == v for k, v in record.items())
        )
        record["slices"] = set(sampled) | (meta["slices"] if keep else set())
        region = [slice(None)] * 3
        region[axis] = slice(min(sampled), max(sampled) + 1)
        box = tuple(region) if keep else None
        stack = self._put(SAMPLES, samples, box and (slice(None), *box), stack_geometry(image))
        stack.metadata[_META] = record
        self._put(MEAN, mean, box, L.geometry(image))
        heat = self._put(ENTROPY, ent, box, L.geometry(image))
        if (colorbar := getattr(heat, "colorbar", None)) is not None:
            colorbar.visible = True  # entropy, in bits
        self._candidate.max = len(samples) - 1
        self.update_diversity()
        self._say(
            f"{self._job_name}: {len(samples)} candidates from {key[0]} in '{SAMPLES}' (slider"
            f" k), their mean in '{MEAN}', disagreement in '{ENTROPY}' (bits, 0 = all agree)."
        )

    def _put(self, name: str, data: np.ndarray, box: Region | None, geometry: dict) -> Image:
        """Write ``data`` (or only its ``box``) into the Image layer ``name``, made if absent."""
        layer = self._find(name)
        if layer is None:
            layer = self._viewer.add_image(
                data, name=name, blending="additive", contrast_limits=(0, 1),
                **_STYLE[name], **geometry,
            )  # fmt: skip
        elif box is not None:
            layer.data[box] = data[box]
            layer.refresh()
        else:  # new samples, maybe of another image: its data and its place
            layer.data = data
            for key, value in geometry.items():
                setattr(layer, key, value)
            layer.contrast_limits = (0, 1)
        return layer

    def _samples(self) -> tuple[Image, dict] | str:
        """The samples layer of the chosen image with its record, or why there is none."""
        layer, image = self._find(SAMPLES), self._image.value
        meta = layer.metadata.get(_META) if isinstance(layer, Image) else None
        if meta is None or image is None:
            return "no samples: press Sample slice or Sample volume first"
        if meta["source"] != _source(image) or layer.data.shape[1:] != image.data.shape:
            return f"the samples are of another image: sample '{image.name}' first"
        if meta["axis"] != self._axis.value:
            return f"the samples were drawn along axis {meta['axis']}: choose that slicing axis"
        return layer, meta

    def update_diversity(self, *_: Any) -> None:
        """Show the current slice's candidate diversity (mean pairwise ``1 - Dice``)."""
        try:
            got = self._samples()
        except RuntimeError:  # the dock widget was closed, the viewer lives on
            return
        if isinstance(got, str):
            self.diversity.value = ""
            return
        (layer, meta), index = got, self.current_slice()
        if index not in meta["slices"]:
            self.diversity.value = f"slice {index}: not sampled"
            return
        candidates = np.take(np.asarray(layer.data), index, axis=meta["axis"] + 1)
        self.diversity.value = f"slice {index}: {diversity(candidates):.3f}"

    def commit_candidate(self) -> bool:
        """Write candidate k (probability > 0.5) into the output layer as the commit label."""
        k = int(self._candidate.value)
        return self._commit(lambda s, r: s[(k, *r)] > 0.5, f"candidate {k}")

    def commit_mean(self) -> bool:
        """Write the candidates' mean above the threshold t into the output layer."""
        t = float(self._threshold.value)
        return self._commit(lambda s, r: mean_probability(s[(slice(None), *r)]) > t, f"mean > {t}")

    def _commit(self, select: Callable[[np.ndarray, Region], np.ndarray], what: str) -> bool:
        """Write ``select(samples, region)`` (boolean) on the current slice or every sampled one.

        Within the region, voxels of the commit label are replaced by the mask and other labels
        kept; slices that were not sampled stay as they are.
        """
        if self._job is not None:
            self._error(f"{self._job_name} is still running: wait for it, or press Cancel")
            return False
        got, image = self._samples(), self._image.value
        if problem := got if isinstance(got, str) else self._output_problem(image):
            self._error(problem)
            return False
        (layer, meta), value = got, int(self._value.value)
        axis, region = meta["axis"], [slice(0, n) for n in image.data.shape]
        if not self._whole.value:
            if (index := self.current_slice()) not in meta["slices"]:
                self._error(f"slice {index} is not sampled: press Sample slice first")
                return False
            region[axis] = slice(index, index + 1)
        region = tuple(region)
        if (out := self._output_layer()) is None:
            zeros = np.zeros(image.data.shape, np.int32)
            kwargs = {**L.geometry(image), "metadata": L.labels_metadata(image.metadata)}
            out = self._viewer.add_labels(zeros, name=OUTPUT_LAYER, opacity=0.5, **kwargs)
        on = np.zeros(image.data.shape[axis], bool)
        on[sorted(meta["slices"])] = True
        on = on[region[axis]].reshape([-1 if a == axis else 1 for a in range(3)])
        mask = np.where(on, select(np.asarray(layer.data), region), out.data[region] == value)
        n = self._write(out, region, mask.astype(np.int32) * value, [value])
        where = "every sampled slice" if self._whole.value else f"slice {region[axis].start}"
        self._say(
            f"Committed {what} on {where} as label {value}: {n} voxels of '{OUTPUT_LAYER}'"
            " changed" + (" (Undo reverts)." if n else ".")
        )
        return True

    def _output_layer(self) -> Labels | None:
        layer = self._find(OUTPUT_LAYER)
        return layer if isinstance(layer, Labels) else None

    def _output_problem(self, image: Image) -> str:
        layer = self._output_layer()
        if layer is None or layer.data.shape == image.data.shape:
            return ""
        return f"the '{OUTPUT_LAYER}' layer has another shape than '{image.name}': rename it"
