"""One-line summaries of results, worded alike in the CLI, napari and Slicer."""

from __future__ import annotations


def describe_paths(backend: str, counts: dict[str, int]) -> str:
    """Which path the queries of an ``auto`` run took, on one line (empty: one-path backend).

    ``counts`` is :meth:`fmseg.incontext.InContextResult.path_counts`, e.g.
    ``{"prior": 40, "in-context": 88}`` ->
    ``"auto: 40 slices on the prior path (annotated slices nearby), 88 in-context"``.
    """
    if not counts:
        return ""
    prior, plain = counts.get("prior", 0), counts.get("in-context", 0)
    noun = "slice" if prior == 1 else "slices"
    where = "on the prior path (annotated slices nearby)"
    return f"{backend}: {prior} {noun} {where}, {plain} in-context"
