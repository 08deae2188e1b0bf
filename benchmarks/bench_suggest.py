"""The annotation loop: which slice to annotate next, fmseg's suggestion vs simple rules; JSON.

On held-out structures (``liver``: LiTS evaluation half; ``aal``: the 10 held-out AAL
structures; ``heldout-subjects`` / ``heldout-structures``: the corpus's held-out split, see
``bench_incontext.py``), a simulated clinician starts from the 2 slices at 1/3 and 2/3 of the
structure's true extent and annotates one slice at a time (the ground truth's slice is the
annotation) up to ``--max-slices``, chosen by:

* ``fmseg``: the best-ranked suggestion (:func:`fmseg.incontext.suggest.suggest_slices_iter`,
  default weight); ``disagreement`` / ``distance``: the same with weight 1 / 0 (ablations);
  a suggested slice without the structure cannot be annotated: the next one is taken and the
  skip counted (``skipped``);
* ``even``: re-planning, ``n`` slices evenly spaced over the true extent for ``n`` annotations
  (knows the true extent: an oracle a clinician does not have);
* ``random``: a random slice holding the structure (mean of ``--seeds`` seeds).

After each step the backend segments the volume from the annotated slices; score: 3D Dice over
the true extent +- 2 slices, annotated slices taken as annotated. Summary: the slices each
strategy needs to reach the Dice of 8 evenly spaced slices (``max + 1`` when never).

Usage::

    PYTHONPATH=core python benchmarks/bench_suggest.py --jobs 2 \
        --out benchmarks/results/suggest.json --plot docs/suggest_loop.png
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch
from bench_incontext import CORPUS_GROUPS, GROUPS, TITLES, targets_for

from fmseg.incontext import SupportSet, add_slice, build_backend, segment_volume_iter
from fmseg.incontext.segment import volume_source
from fmseg.incontext.suggest import WEIGHT, suggest_slices_iter
from fmseg.metrics import dice
from fmseg.progress import drain
from fmseg.weights import WeightsError

RULES = {"fmseg": WEIGHT, "disagreement": 1.0, "distance": 0.0}
START = 2
EVAL_MARGIN = 2
REFERENCE = 8  # "the Dice of 8 evenly spaced slices"


def true_extent(labels: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last slice holding the structure."""
    present = np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != axis)))
    return int(present[0]), int(present[-1])


def holding(labels: np.ndarray, axis: int) -> set[int]:
    """Slices holding the structure (the ones a clinician can annotate)."""
    return set(np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != axis))).tolist())


def nearest_holding(i: int, ok: set[int], taken: set[int]) -> int:
    """``i`` or the nearest slice holding the structure that is not annotated yet."""
    return min((s for s in ok if s not in taken), key=lambda s: (abs(s - i), s))


def evenly(lo: int, hi: int, n: int, ok: set[int]) -> list[int]:
    """``n`` slices evenly spaced inside ``[lo, hi]`` (each moved to a slice holding it)."""
    out: set[int] = set()
    for p in np.linspace(lo, hi, n + 2)[1:-1]:
        out.add(nearest_holding(int(round(p)), ok, out))
    return sorted(out)


class Loop:
    """One target and backend: segmentations and scores of annotated-slice sets."""

    def __init__(self, target: dict, backend):
        self.t, self.backend = target, backend
        self.axis = target["axis"]
        self.lo, self.hi = true_extent(target["labels"], self.axis)
        size = target["labels"].shape[self.axis]
        self.region = list(
            range(max(0, self.lo - EVAL_MARGIN), min(size, self.hi + EVAL_MARGIN + 1))
        )
        self.ok = holding(target["labels"], self.axis)
        self.source = volume_source(target["image"])
        self.truth = np.take(target["labels"] > 0, self.region, self.axis)
        self._cache: dict[tuple[int, ...], float] = {}
        self.seconds: list[float] = []

    def support(self, slices: list[int]) -> SupportSet:
        """The support set of these annotated slices."""
        s = SupportSet()
        for i in sorted(slices):
            add_slice(s, self.t["image"], self.t["labels"], self.axis, i, self.t["window"],
                      source=self.source)  # fmt: skip
        return s

    def score(self, slices: list[int], probs: np.ndarray | None = None) -> float:
        """3D Dice over the true extent +- 2 (``probs``: a volume-shaped result to reuse)."""
        key = tuple(sorted(slices))
        if key in self._cache:
            return self._cache[key]
        if probs is None:
            work = segment_volume_iter(
                self.backend, self.support(slices), self.t["image"], self.axis, self.t["window"],
                [1], self.region, source=self.source,
            )  # fmt: skip
            probs = drain(work).probs[1]
        pred = np.take(probs > 0.5, self.region, self.axis)
        for i in key:  # the annotated slices are what the clinician drew
            where = [slice(None)] * 3
            where[self.axis] = self.region.index(i)
            pred[tuple(where)] = np.take(self.t["labels"] > 0, i, self.axis)
        self._cache[key] = round(float(dice(pred, self.truth)), 4)
        return self._cache[key]

    def suggested(self, weight: float, steps: int) -> tuple[list[float], int]:
        """Dice curve following the suggestions, and how many suggestions were skipped."""
        slices = evenly(self.lo, self.hi, START, self.ok)
        curve, skipped = [], 0
        while True:
            t0 = time.perf_counter()
            res = drain(
                suggest_slices_iter(
                    self.backend,
                    self.support(slices),
                    self.t["image"],
                    self.axis,
                    self.t["window"],
                    1,
                    self.source,
                    weight,
                )  # fmt: skip
            )
            self.seconds.append(time.perf_counter() - t0)
            curve.append(self.score(slices, res.probs))
            if len(slices) >= steps:
                return curve, skipped
            pick = next((s for s in res.ranked if s.index in self.ok), None)
            skipped += next(k for k, s in enumerate(res.ranked) if s is pick)
            slices.append(pick.index)

    def even(self, steps: int) -> list[float]:
        """Dice curve of re-planned evenly spaced slices."""
        return [self.score(evenly(self.lo, self.hi, n, self.ok)) for n in range(START, steps + 1)]

    def random(self, steps: int, seed: int) -> list[float]:
        """Dice curve of random slices holding the structure."""
        rng = np.random.default_rng(seed)
        slices = evenly(self.lo, self.hi, START, self.ok)
        curve = [self.score(slices)]
        while len(slices) < steps:
            slices.append(int(rng.choice(sorted(self.ok - set(slices)))))
            curve.append(self.score(slices))
        return curve


def weight_of(rule: str) -> float:
    """A rule's weight: :data:`RULES`, or ``w<weight>`` (e.g. ``w0.25``) for other weights."""
    return RULES[rule] if rule in RULES else float(rule[1:])


def run_target(
    target: dict, backend_name: str, steps: int, seeds: int, rules: list[str], checkpoint=None
) -> dict:
    """Every strategy's Dice curve on one target with one backend."""
    t0 = time.perf_counter()
    net = checkpoint if backend_name in ("auto", "incontext-prior") else None
    try:
        loop = Loop(target, build_backend(backend_name, device="cpu", checkpoint=net))
    except WeightsError as err:  # e.g. auto's network not shipped yet: say so, run the rest
        print(f"skipping {backend_name}: {err}", flush=True)
        return {"error": str(err)}
    out: dict = {"curves": {}, "skipped": {}}
    for rule in rules:
        out["curves"][rule], out["skipped"][rule] = loop.suggested(weight_of(rule), steps)
    out["curves"]["even"] = loop.even(steps)
    curves = [loop.random(steps, s) for s in range(seeds)]
    out["curves"]["random"] = [round(float(v), 4) for v in np.mean(curves, 0)]
    out["reference"] = loop.score(evenly(loop.lo, loop.hi, REFERENCE, loop.ok))
    out["suggest_s"] = round(float(np.median(loop.seconds)), 3)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{backend_name} {target['name']}: {out['curves']} ({out['seconds']} s)", flush=True)
    return out


def needed(curve: list[float], reference: float, steps: int) -> int:
    """Annotated slices until the curve reaches ``reference`` (``steps + 1``: never)."""
    return next((START + k for k, v in enumerate(curve) if v >= reference - 1e-4), steps + 1)


def summarise(per: dict, targets: list[dict], steps: int) -> dict:
    """Mean curves and slices needed, per backend and group (and ``all``)."""
    out: dict = {}
    for backend, rows in per.items():
        rows = {n: r for n, r in rows.items() if "error" not in r}
        if not rows:
            continue
        groups: dict[str, list[str]] = {"all": list(rows)}
        for t in targets:
            if t["name"] in rows:
                groups.setdefault(t["group"], []).append(t["name"])
        for g, names in groups.items():
            strategies = rows[names[0]]["curves"]
            out.setdefault(backend, {})[g] = {
                "targets": len(names),
                "dice": {
                    s: [
                        round(float(v), 4)
                        for v in np.mean([rows[n]["curves"][s] for n in names], 0)
                    ]
                    for s in strategies
                },
                "slices_to_even8": {
                    s: round(
                        float(
                            np.mean(
                                [
                                    needed(rows[n]["curves"][s], rows[n]["reference"], steps)
                                    for n in names
                                ]
                            )
                        ),
                        2,
                    )
                    for s in strategies
                },  # fmt: skip
                "suggest_s": round(float(np.median([rows[n]["suggest_s"] for n in names])), 3),
            }
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the loop benchmark; print (and write) JSON, optionally plot."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="interpolation,auto")
    p.add_argument("--groups", default=",".join(GROUPS + CORPUS_GROUPS[:2]))
    p.add_argument("--rules", default=",".join(RULES), help=f"suggestion weights of {list(RULES)}")
    p.add_argument("--max-slices", type=int, default=10)
    p.add_argument("--seeds", type=int, default=5, help="random strategy: seeds averaged")
    p.add_argument("--limit", type=int, default=0, help="targets per group (0: all)")
    p.add_argument("--quick", action="store_true", help="1 target per group, 8 slices, 2 seeds")
    p.add_argument("--jobs", type=int, default=1, help="(target, backend) runs in parallel")
    p.add_argument("--checkpoint", help="weights of auto's network (default: the shipped ones)")
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--replot", type=Path, help="only plot this earlier JSON result")
    args = p.parse_args(argv)
    if args.replot:
        result = json.loads(args.replot.read_text())
        plot(result, args.plot)
        return result
    if args.quick:
        args.limit, args.max_slices, args.seeds = args.limit or 1, 8, 2
    groups = args.groups.split(",")
    targets = [t for t in targets_for(groups) if t["group"] in groups]
    if args.limit:
        targets = [t for g in groups for t in [t for t in targets if t["group"] == g][: args.limit]]
    global _TARGETS
    _TARGETS = targets
    rules = args.rules.split(",")
    jobs = [(k, b, args.max_slices, args.seeds, rules, args.checkpoint)
            for b in args.backends.split(",") for k in range(len(targets))]  # fmt: skip
    t0 = time.perf_counter()
    if args.jobs > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            parts = pool.starmap(_job, jobs, chunksize=1)
    else:
        parts = [_job(*j) for j in jobs]
    per: dict = {}
    for (k, b, *_), part in zip(jobs, parts, strict=True):
        per.setdefault(b, {})[targets[k]["name"]] = part
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "start": "2 slices at 1/3 and 2/3 of the true extent",
        "max_slices": args.max_slices,
        "seeds": args.seeds,
        "checkpoint": args.checkpoint,
        "groups": groups,
        "seconds": round(time.perf_counter() - t0, 1),
        "summary": summarise(per, targets, args.max_slices),
        "per_target": per,
    }
    text = json.dumps(result, indent=1)
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        plot(result, args.plot)
    return result


_TARGETS: list[dict] = []  # set by main(); read by the worker processes (fork)


def _job(k: int, backend: str, *rest) -> dict:
    return run_target(_TARGETS[k], backend, *rest)


def plot(result: dict, path: Path) -> None:
    """Whole-structure Dice vs annotated slices: a panel per (backend, group), a line per rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    panels = [(b, g) for b, rows in summary.items() for g in rows]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    styles = {"fmseg": "o-", "even": "s--", "random": "^:", "disagreement": ".-", "distance": ".-"}
    for ax, (b, g) in zip(axes.flat, panels, strict=False):
        row = summary[b][g]
        for s, curve in row["dice"].items():
            n = list(range(START, START + len(curve)))
            need = row["slices_to_even8"][s]
            ax.plot(n, curve, styles.get(s, ".-"), ms=4, label=f"{s} (needs {need:g})")
        title = TITLES.get(g, "all targets")
        ax.set_title(f"{b}: {title} ({row['targets']})", fontsize=9)
        ax.set_xlabel("annotated slices")
        ax.set_ylabel("3D Dice (extent +- 2)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right", title="slices to reach even-8", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
