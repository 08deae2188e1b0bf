"""Shared by the napari tests: the ``errors`` fixture, and :mod:`napari_helpers` importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from napari_fmseg import _controls

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:  # importlib mode: make napari_helpers importable by the tests here
    sys.path.insert(0, _HERE)


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """The error notifications the tools show (instead of showing them)."""
    shown: list[str] = []
    monkeypatch.setattr(_controls, "show_error", shown.append)
    return shown
