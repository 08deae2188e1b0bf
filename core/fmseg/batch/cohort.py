"""A cohort: the cases of a batch run, from a glob, a folder or a CSV manifest; box prompts.

A case is one volume file with a unique name (its file name without the volume ending, or the
manifest's ``case`` column). Box prompts come from a CSV file with one row per object::

    case,slice,a0,b0,a1,b1,label
    liver_001,40,30,22,90,80,1
    liver_002,35,28,20,88,79,1

``a``/``b`` are voxel indices of the two axes that remain after removing the job's axis, in
ascending axis order, exactly as ``fmseg segment --box A0 B0 A1 B1``; ``label`` is optional
(default 1). A case may have several rows (several objects or labels).
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from ..interactive.prompts import Box
from ..io import SUPPORTED_EXTENSIONS

__all__ = ["BoxPrompt", "Case", "case_name", "read_box_file", "read_cohort"]


@dataclass(frozen=True)
class BoxPrompt:
    """One object of a case: a box on a slice and the label value it is written with.

    Attributes:
        slice: Index along the job's axis.
        a0, b0, a1, b1: Corners in voxels of the first (``a``) and second (``b``) remaining axes.
        label: Label value written for the object.
    """

    slice: int
    a0: float
    b0: float
    a1: float
    b1: float
    label: int = 1

    def box(self) -> Box:
        """The :class:`~fmseg.interactive.prompts.Box` in slice pixels (x = column = ``b``)."""
        return Box(self.b0, self.a0, self.b1, self.a1)

    def to_dict(self) -> dict:
        """Plain values for the provenance file."""
        return {"slice": self.slice, "box": [self.a0, self.b0, self.a1, self.b1],
                "label": self.label}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One volume of the cohort.

    Attributes:
        name: Unique name; outputs are ``<name>.nii.gz`` and ``<name>.json``.
        image: Path of the volume file.
        boxes: The case's box prompts (empty when the job needs none).
    """

    name: str
    image: str
    boxes: tuple[BoxPrompt, ...] = ()


def case_name(path: str | os.PathLike) -> str:
    """The file name without its volume ending: ``a/ct_01.nii.gz`` -> ``ct_01``."""
    name = Path(path).name
    for ext in SUPPORTED_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _is_volume(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SUPPORTED_EXTENSIONS)


def _from_manifest(path: Path) -> list[Case]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "image" not in rows[0]:
        raise ValueError(f"manifest '{path}' needs a header with an 'image' column (and 'case')")
    cases = []
    for n, row in enumerate(rows, start=2):
        image = (row.get("image") or "").strip()
        if not image:
            raise ValueError(f"manifest '{path}' line {n}: empty 'image'")
        if not os.path.isabs(image):
            image = os.fspath(path.parent / image)  # relative to the manifest's folder
        cases.append(Case((row.get("case") or "").strip() or case_name(image), image))
    return cases


def read_cohort(source: str | os.PathLike | list) -> list[Case]:
    """The cases of a glob pattern, a folder (its NIfTI/NRRD files), a CSV manifest or a list.

    Args:
        source: ``"data/*.nii.gz"``; a folder; a ``.csv`` file with columns ``image`` (paths
            relative to the CSV's folder or absolute) and optionally ``case``; or a list of
            paths or :class:`Case` objects.

    Returns:
        The cases in a stable order (sorted paths for globs and folders, file order otherwise).

    Raises:
        ValueError: Nothing matches, a malformed manifest, or two cases with the same name.
    """
    if isinstance(source, (list, tuple)):
        cases = [c if isinstance(c, Case) else Case(case_name(c), os.fspath(c)) for c in source]
        where = "the list"
    else:
        text, p = os.fspath(source), Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if _is_volume(f))
            where = f"folder '{text}'"
        elif p.is_file() and p.suffix.lower() == ".csv":
            files, where = None, f"manifest '{text}'"
        else:
            files = sorted(Path(f) for f in glob.glob(text, recursive=True) if _is_volume(Path(f)))
            where = f"pattern '{text}'"
        if files is None:
            cases = _from_manifest(p)
        else:
            cases = [Case(case_name(f), os.fspath(f)) for f in files]
    if not cases:
        endings = ", ".join(SUPPORTED_EXTENSIONS)
        raise ValueError(f"no NIfTI/NRRD volumes in {where} (use {endings})")
    seen: dict[str, str] = {}
    for c in cases:
        if c.name in seen:
            raise ValueError(f"two cases are named '{c.name}': '{seen[c.name]}' and '{c.image}'")
        seen[c.name] = c.image
    return cases


_BOX_COLUMNS = ("case", "slice", "a0", "b0", "a1", "b1")


def read_box_file(path: str | os.PathLike) -> dict[str, tuple[BoxPrompt, ...]]:
    """Box prompts per case name from a CSV (see the module docstring).

    Raises:
        ValueError: A missing column or a value that is not a number, naming file and line.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in _BOX_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise ValueError(f"box file '{path}' needs the columns {','.join(_BOX_COLUMNS)}[,label]")
    out: dict[str, list[BoxPrompt]] = {}
    for n, row in enumerate(rows, start=2):
        try:
            prompt = BoxPrompt(
                int(row["slice"]),
                *(float(row[k]) for k in ("a0", "b0", "a1", "b1")),
                label=int(row.get("label") or 1),
            )
        except (TypeError, ValueError):
            raise ValueError(f"box file '{path}' line {n}: slice, a0, b0, a1, b1 and label "
                             "must be numbers") from None  # fmt: skip
        out.setdefault(row["case"].strip(), []).append(prompt)
    return {k: tuple(v) for k, v in out.items()}
