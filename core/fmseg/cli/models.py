"""``fmseg models``: the registry's models, where their weights come from, their licences."""

from __future__ import annotations

import argparse

from ..registry import REGISTRY


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``models`` sub-command."""
    s = sub.add_parser("models", help="list registered models, weights and licences")
    s.set_defaults(run=run)


def run(args: argparse.Namespace | None = None) -> None:
    """Print the registry."""
    for spec in REGISTRY.values():
        src = spec.weights.location if spec.weights else "your checkpoint (--checkpoint)"
        print(
            f"{spec.name:20s} {spec.description}\n{'':20s} weights: {src}\n"
            f"{'':20s} licence: {spec.licence}"
        )
