"""The **Uncertainty** tool: several plausible masks per query, and where they disagree.

It runs on the :class:`~._support.SupportPanel` (the image, annotations, label value, slicing
axis and support set it shares with the In-context tool in the fmseg dock) with a *sampler*
of :data:`fmseg.incontext.SAMPLERS`: a Tyche network, or ``<backend>+tta`` (K runs on
perturbed inputs and support subsets). A run fills four Image layers: ``samples`` (the
``(K, Z, Y, X)`` candidate probabilities; napari gives a slider over K), ``mean``, and the
two maps of :data:`fmseg.uncertainty.MAPS`, ``disagreement`` (shown by default) and ``total
uncertainty`` (bits; drawn by :mod:`._uncertainty_display`: transparent at 0, fixed range,
with their legend). The clinician commits one candidate, or the mean above a threshold,
into the "uncertainty result" Labels layer (:class:`~._output.OutputLayer`, undoably); the
annotations layer is only read. Sampling, the maps and the commit's merge run in a worker
(:class:`~._worker.JobRunner`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from napari.layers import Image

from fmseg.incontext import SAMPLERS, build_sampler, sample_volume_iter
from fmseg.progress import Progress, Work
from fmseg.registry import ModelLoader, load_model
from fmseg.uncertainty import DEFAULT_MAP, diversity, mean_probability
from fmseg.weights import WeightsError

from . import _layers as L
from . import _uncertainty_display as D
from ._controls import StatusLine, button_row
from ._output import OutputLayer, Region, Write, plan_on_slices
from ._support import Query, SupportPanel, source
from ._worker import JobRunner, call_work

if TYPE_CHECKING:
    import napari

    from fmseg.incontext import AugmentedSampler, TycheBackend

    Sampler = TycheBackend | AugmentedSampler

OUTPUT_LAYER = L.UNCERTAINTY_LAYER
SAMPLES, MEAN = L.SAMPLES, L.MEAN
DISAGREEMENT, TOTAL = D.MAP_LAYERS["disagreement"], D.MAP_LAYERS["total"]
_META = "fmseg_uncertainty"  # samples layer metadata: source, axis, sampled slices
_STYLE = {  # hidden until asked for; the maps: translucent, transparent at 0
    SAMPLES: {"colormap": "cyan", "visible": False, "blending": "additive"},
    MEAN: {"colormap": "magma", "visible": False, "blending": "additive"},
    **{name: D.map_style(kind) for kind, name in D.MAP_LAYERS.items()},
}
_ROWS = (
    (("Sample slice", "sample_slice"), ("Sample volume", "sample_volume")),
    (("Commit candidate k", "commit_candidate"), ("Commit mean > t", "commit_mean")),
    (("Undo", "undo"), ("Cancel", "cancel")),
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
    get_sampler: Callable[[], Sampler], query: Query, batch: int
) -> Work[tuple[Sampler, np.ndarray, np.ndarray, np.ndarray]]:
    """Build (or reuse) the sampler, sample, summarise the region: runs in the worker thread.

    Returns:
        The sampler, the ``(K, *volume.shape)`` samples, their mean and the maps (layer name
        -> map in bits; all 0 outside the query's region).
    """
    yield Progress(0, 0, "loading the sampler")
    volume = query.volume
    try:
        sampler = get_sampler()
        samples = yield from sample_volume_iter(
            sampler, query.support, volume, label=query.value or None, batch=batch,
            **query.volume_kwargs(),
        )  # fmt: skip
    except WeightsError as exc:
        advice = "choose another sampler, e.g. interpolation+tta, or install the weights"
        raise SamplerUnavailable(f"{exc} ({advice})") from None
    yield Progress(0, 0, "mean, disagreement, total uncertainty")
    region = query.region
    part = samples[(slice(None), *region)]
    mean = np.zeros(volume.shape, np.float32)
    mean[region] = mean_probability(part)
    maps = {}
    for name, values in D.maps_of(part).items():
        maps[name] = np.zeros(volume.shape, np.float32)
        maps[name][region] = values
    return sampler, samples, mean, maps


class UncertaintyWidget(mw.Container):
    """K plausible segmentations of the chosen image from a support set, and their spread.

    Args:
        viewer: The napari viewer (npe2 passes it).
        load: How networks are built (None: :func:`fmseg.registry.load_model`, the real
            weights; :func:`fmseg.registry.load_tiny` in tests and demos without weights).
        sampler_factory: Builds a sampler, ``factory(name, k=k)``; defaults to
            :func:`fmseg.incontext.build_sampler` with ``load``.
        panel: The support-set panel to use (the dock shares one); by default its own.
    """

    batch = 4  # query slices per sampler call: progress and cancel granularity

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        load: ModelLoader | None = None,
        sampler_factory: Callable[..., Sampler] | None = None,
        panel: SupportPanel | None = None,
    ) -> None:
        super().__init__(labels=False)  # the panel spans the width, the controls have labels
        self._viewer = viewer
        self.load = load or load_model  # public: the dock and tests read it
        self._sampler_factory = sampler_factory or functools.partial(build_sampler, load=self.load)
        self._sampler: tuple[tuple[str, int], Sampler] | None = None  # the last one built
        self.status = StatusLine("Annotate slices, add them to the support set, then sample.")
        self.jobs = JobRunner(self.status)
        self.output = OutputLayer(viewer, OUTPUT_LAYER, self.status)
        self.panel = panel or SupportPanel(viewer)
        self._build()
        self.show_panel()

    def _build(self) -> None:
        self._slot = mw.Container(labels=False)
        self._slot.native.layout().setContentsMargins(0, 0, 0, 0)
        self._sampler_name = mw.ComboBox(
            label="sampler", choices=list(SAMPLERS), value="tyche-small"
        )
        self._sampler_name.tooltip = "\n".join(f"{k}: {v}" for k, v in SAMPLERS.items())
        self._k = mw.SpinBox(label="K (candidates)", min=2, max=16, value=8)
        self._map = mw.ComboBox(label="map", choices=D.MAP_CHOICES, value=DEFAULT_MAP)
        self._map.tooltip = "\n".join(D.legend_text(kind) for _, kind in D.MAP_CHOICES)
        self._map.changed.connect(self.show_map)
        self.legend = mw.Label(label="legend", value="")  # public: tests read it
        self.legend.native.setWordWrap(True)
        self.diversity = mw.Label(label="diversity", value="")  # public: tests read it
        self.diversity.tooltip = "mean pairwise 1 - Dice of the current slice's candidates"
        self._candidate = mw.SpinBox(label="candidate k", min=0, max=7, value=0)
        self._candidate.tooltip = f"index on the K slider of '{SAMPLES}' (from 0)"
        self._threshold = mw.FloatSpinBox(
            label="mean threshold t", min=0.01, max=0.99, step=0.05, value=0.5
        )
        self._value = mw.SpinBox(label="commit as label", min=1, max=65535, value=1)
        self.panel._label.changed.connect(lambda v: v and setattr(self._value, "value", v))
        self._whole = mw.CheckBox(label="whole volume", value=False)
        self._whole.tooltip = "commit every sampled slice (else the current slice only)"
        rows = [button_row(self, row) for row in _ROWS]
        controls = mw.Container(
            widgets=[self._sampler_name, self._k, rows[0], self._map, self.legend]
            + [self.diversity, self._candidate]
            + [self._threshold, self._value, self._whole, *rows[1:], self.jobs.bar]
        )
        controls.margins = (0, 0, 0, 0)
        self.extend([self._slot, controls, self.status])
        self._viewer.dims.events.current_step.connect(self.update_diversity)
        self.panel._axis.changed.connect(self.update_diversity)

    @property
    def busy(self) -> bool:
        """True while sampling or a commit runs (or, cancelled, finishes its current step)."""
        return self.jobs.busy

    def show_panel(self) -> None:
        """Show the support-set panel here (the dock calls it when this tool comes in front)."""
        self.panel.host(self._slot, self.status)

    def sample_slice(self) -> None:
        """Draw K candidates for the current slice along the slicing axis (in a worker)."""
        self._sample(whole=False)

    def sample_volume(self) -> None:
        """Draw K candidates for every slice along the slicing axis (in a worker)."""
        self._sample(whole=True)

    def _sample(self, whole: bool) -> None:
        if not self.jobs.idle() or (query := self.panel.query(whole, self.output)) is None:
            return
        key = (str(self._sampler_name.value), int(self._k.value))
        work = _sample_work(functools.partial(self._get_sampler, key), query, self.batch)
        name = query.name("sample")
        self.status.say(f"{name}: {key[0]}, K = {key[1]} ...")
        self.jobs.run(work, name, functools.partial(self._on_samples, query, key, name))

    def _get_sampler(self, key: tuple[str, int]) -> Sampler:
        """The cached sampler for ``key``, or a new one (called in the worker)."""
        cached = self._sampler
        if cached is not None and cached[0] == key:
            return cached[1]
        return self._sampler_factory(key[0], k=key[1])

    def _find(self, name: str) -> Any:
        return next((x for x in self._viewer.layers if x.name == name), None)

    def _on_samples(self, query: Query, key: tuple[str, int], name: str, out: tuple) -> None:
        """Put samples, mean and maps into their layers (GUI thread)."""
        sampler, samples, mean, maps = out
        self._sampler = (key, sampler)
        image, axis = query.image, query.axis
        if image not in self._viewer.layers or image.data.shape != mean.shape:
            self.status.error("the image changed while sampling: result dropped")
            return
        if taken := [n for n in _STYLE if not isinstance(self._find(n), Image | None)]:
            self.status.error(f"a layer '{taken[0]}' is not an image: rename it (result dropped)")
            return
        sampled = range(image.data.shape[axis]) if query.whole else [query.index]
        old = self._find(SAMPLES)
        meta = dict(old.metadata.get(_META, {})) if old is not None else {}
        record = {"source": source(image), "axis": axis}
        keep = (  # a slice added to earlier samples of this image, axis and K
            not query.whole
            and old is not None
            and old.data.shape == samples.shape
            and all(meta.get(k) == v for k, v in record.items())
        )
        record["slices"] = set(sampled) | (meta["slices"] if keep else set())
        box = query.region if keep else None
        stack = self._put(SAMPLES, samples, box and (slice(None), *box), stack_geometry(image))
        stack.metadata[_META] = record
        self._put(MEAN, mean, box, L.geometry(image))
        for layer_name, values in maps.items():
            self._put(layer_name, values, box, L.geometry(image))
        self.show_map()
        self._candidate.max = len(samples) - 1
        self.update_diversity()
        self.status.say(
            f"{name}: {len(samples)} candidates from {key[0]} in '{SAMPLES}' (slider k),"
            f" their mean in '{MEAN}', maps in '{DISAGREEMENT}' and '{TOTAL}' (bits)."
        )

    def show_map(self, *_: Any) -> None:
        """Show the chosen map (disagreement or total uncertainty) with its legend."""
        kind = str(self._map.value)
        shown = D.show_map(self._viewer, kind)
        self.legend.value = D.legend_text(kind) if shown is not None else ""

    def _put(self, name: str, data: np.ndarray, box: Region | None, geometry: dict) -> Image:
        """Write ``data`` (or only its ``box``) into the Image layer ``name``, made if absent."""
        layer = self._find(name)
        if layer is None:
            style = {"contrast_limits": (0, 1), **_STYLE[name]}
            layer = self._viewer.add_image(data, name=name, **style, **geometry)
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
        layer, image = self._find(SAMPLES), self.panel._image.value
        meta = layer.metadata.get(_META) if isinstance(layer, Image) else None
        if meta is None or image is None:
            return "no samples: press Sample slice or Sample volume first"
        if meta["source"] != source(image) or layer.data.shape[1:] != image.data.shape:
            return f"the samples are of another image: sample '{image.name}' first"
        if meta["axis"] != self.panel._axis.value:
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
        (layer, meta), index = got, self.panel.current_slice()
        if index not in meta["slices"]:
            self.diversity.value = f"slice {index}: not sampled"
            return
        candidates = np.asarray(layer.data[(slice(None),) * (meta["axis"] + 1) + (index,)])
        self.diversity.value = f"slice {index}: {diversity(candidates):.3f}"

    def commit_candidate(self) -> bool:
        """Write candidate k (probability > 0.5) into the output layer (in a worker)."""
        k = int(self._candidate.value)
        return self._commit(lambda s, r: s[(k, *r)] > 0.5, f"candidate {k}")

    def commit_mean(self) -> bool:
        """Write the candidates' mean above the threshold t into the output layer (in a worker)."""
        t = float(self._threshold.value)
        return self._commit(lambda s, r: mean_probability(s[(slice(None), *r)]) > t, f"mean > {t}")

    def _commit(self, select: Callable[[np.ndarray, Region], np.ndarray], what: str) -> bool:
        """Write ``select(samples, region)`` (boolean) on the current slice or every sampled one.

        Within the region, voxels of the commit label are replaced by the mask and other labels
        kept; slices that were not sampled stay as they are. Returns whether the commit started.
        """
        if not self.jobs.idle():
            return False
        got, image = self._samples(), self.panel._image.value
        if problem := got if isinstance(got, str) else self.output.problem(image):
            return self.status.error(problem)
        (layer, meta), value = got, int(self._value.value)
        axis, region = meta["axis"], [slice(0, n) for n in image.data.shape]
        if not self._whole.value:
            if (index := self.panel.current_slice()) not in meta["slices"]:
                return self.status.error(f"slice {index} is not sampled: press Sample slice first")
            region[axis] = slice(index, index + 1)
        region = tuple(region)
        on = np.zeros(image.data.shape[axis], bool)
        on[sorted(meta["slices"])] = True
        on = on[region[axis]].reshape([-1 if a == axis else 1 for a in range(3)])
        samples, target = layer.data, self.output.target()

        def plan() -> Write:  # in the worker
            return plan_on_slices(target, region, on, select(np.asarray(samples), region), value)

        where = "every sampled slice" if self._whole.value else f"slice {region[axis].start}"
        name = f"commit {what}"
        done = functools.partial(self._on_committed, image, f"{what} on {where}", value)
        self.jobs.run(call_work(plan, f"committing {what}"), name, done)
        return True

    def _on_committed(self, image: Image, what: str, value: int, write: Write) -> None:
        n = self.output.apply(write, image)
        self.status.say(
            f"Committed {what} as label {value}: {n} voxels of '{OUTPUT_LAYER}'"
            " changed" + (" (Undo reverts)." if n else ".")
        )

    def cancel(self) -> None:
        """Stop the running sampling or commit at its next step; nothing changes."""
        self.jobs.cancel()

    def undo(self) -> None:
        """Restore the output layer as it was before the last commit."""
        if self.jobs.idle():
            self.output.undo()
