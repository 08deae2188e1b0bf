"""A command's files: inputs read with one-line errors naming the file; outputs checked first.

Every reader raises :class:`CliError` saying which file is wrong and how: missing, unreadable,
corrupt, or not what fmseg expects. Commands call :func:`check_outputs` before loading any
model, so a mistyped ``--out`` costs nothing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ..adapters.api import AdapterError, read_adapter
from ..adapters.facade import labelled_slices
from ..dicom import is_dicom
from ..incontext import SupportSet, add_slice
from ..io import SUPPORTED_EXTENSIONS, Volume, load_volume, volume_format
from .common import CliError, one_line, parse_slices

#: Endings each kind of output may have (``.seg.nrrd`` is an ``.nrrd``).
VOLUME = SUPPORTED_EXTENSIONS
NIFTI = (".nii.gz", ".nii")
ADAPTER = (".pt",)


def check_outputs(args: argparse.Namespace, **endings: tuple[str, ...] | None) -> None:
    """Refuse output paths that cannot be written; call it before any model or compute.

    Args:
        args: Parsed arguments.
        **endings: Argument name (``out``, ``prob_out``) -> allowed endings (None: any).
            Arguments left unset are skipped.

    Raises:
        CliError: An unsupported ending, a missing or read-only folder, or a folder in the way.
    """
    for dest, allowed in endings.items():
        path = getattr(args, dest)
        if path is None:
            continue
        flag, p = f"--{dest.replace('_', '-')}", Path(path)
        if p.is_dir():
            raise CliError(f"{flag} '{path}' is a folder, not a file")
        if allowed and not p.name.lower().endswith(allowed):
            raise CliError(f"{flag} '{path}': unsupported file type (use {', '.join(allowed)})")
        if not p.parent.is_dir():
            raise CliError(f"{flag} '{path}': folder '{p.parent}' does not exist")
        if not os.access(p.parent, os.W_OK | os.X_OK):
            raise CliError(f"{flag} '{path}': folder '{p.parent}' is not writable")


def _require_file(path: str, what: str) -> None:
    p = Path(path)
    if not p.exists():
        raise CliError(f"cannot read {what} '{path}': file not found")
    if p.is_dir():
        raise CliError(f"cannot read {what} '{path}': it is a folder")
    if not os.access(p, os.R_OK):
        raise CliError(f"cannot read {what} '{path}': permission denied")


def _raised_in(err: BaseException, module: str) -> bool:
    """True when ``module`` itself raised ``err``.

    fmseg's own messages are written for users; a library's (a parser choking on a damaged
    file) are not, and are replaced by a plain statement of the problem.
    """
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__") == module


def read_volume(path: str, what: str = "image") -> Volume:
    """:func:`fmseg.io.load_volume` with one-line errors: ``cannot read image 'x.nii': ...``.

    A folder (or a ``.dcm`` file) is read as a DICOM series.
    """
    if Path(path).is_dir() and not is_dicom(path):
        raise CliError(f"cannot read {what} '{path}': it is a folder with no DICOM files")
    if not Path(path).is_dir():
        _require_file(path, what)
    try:
        if not is_dicom(path):
            volume_format(path)
    except ValueError:
        raise CliError(
            f"cannot read {what} '{path}': not a NIfTI/NRRD file or DICOM series "
            f"(use {', '.join(VOLUME)}, or a DICOM folder)"
        ) from None
    try:
        return load_volume(path)
    except MemoryError:
        raise
    except Exception as err:
        ours = _raised_in(err, load_volume.__module__) or _raised_in(err, is_dicom.__module__)
        if isinstance(err, ValueError) and ours:
            why = one_line(err).removeprefix(f"{Path(path)}: ")
            raise CliError(f"cannot use {what} '{path}': {why}") from None
        why = "the file is corrupt or not a NIfTI/NRRD file"
        if isinstance(err, PermissionError):
            why = "permission denied"
        raise CliError(f"cannot read {what} '{path}': {why}") from None


def read_pair(spec: str, flag: str, second: str) -> tuple[Volume, np.ndarray, list[int] | None]:
    """``IMG:LABELS[:SLICES]`` -> the image, its integer label map and the slices (or None)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"{flag} '{spec}': expected IMG:{second} or IMG:{second}:SLICES")
    image, labels = read_volume(parts[0]), read_volume(parts[1], "label map")
    slices = parse_slices(parts[2]) if len(parts) == 3 else None
    return image, np.rint(labels.array).astype(np.int32), slices


def check_adapter(path: str) -> None:
    """Refuse an adapter file that is missing, unreadable, corrupt or not an fmseg adapter."""
    _require_file(path, "adapter")
    try:
        read_adapter(path)
    except AdapterError:
        # never PyTorch's unpickling advice (weights_only=False): the file is simply not usable
        raise CliError(
            f"cannot read adapter '{path}': the file is corrupt or not an fmseg adapter"
        ) from None


def read_support_set(path: str) -> SupportSet:
    """:meth:`SupportSet.load` with one-line errors naming the file."""
    try:
        return SupportSet.load(path)
    except MemoryError:
        raise
    except Exception as err:
        if isinstance(err, ValueError) and _raised_in(err, SupportSet.__module__):
            raise CliError(f"cannot read support set '{path}': {one_line(err)}") from None
        raise CliError(
            f"cannot read support set '{path}': the files are corrupt or not an fmseg support set"
        ) from None


def build_support(args: argparse.Namespace) -> SupportSet:
    """The support set from ``--load-support`` and every ``--support IMG:MASK[:SLICES]``."""
    support = read_support_set(args.load_support) if args.load_support else SupportSet()
    for spec in args.support:
        image, labels, slices = read_pair(spec, "--support", "MASK")
        for i in labelled_slices(labels, args.axis) if slices is None else slices:
            add_slice(support, image.array, labels, args.axis, i, args.window)
    if len(support) == 0:
        raise ValueError("no support slices: give --support IMG:MASK[:SLICES] or --load-support")
    return support
