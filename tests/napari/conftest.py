"""Shared by the napari tests: the ``errors`` fixture, and :mod:`napari_helpers` importable."""

from __future__ import annotations

import os
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


@pytest.fixture(autouse=True)
def _embeddings_in_memory(monkeypatch):
    """No disk cache of embeddings: stand-in encoders must never be stored under real keys."""
    monkeypatch.setenv("FMSEG_EMBEDDING_DISK", "0")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """fmseg's cache (adapter embeddings, fetched weights) in the test's folder, never online."""
    monkeypatch.setenv("FMSEG_CACHE", os.fspath(tmp_path_factory.mktemp("fmseg-cache")))
    monkeypatch.setenv("FMSEG_OFFLINE", "1")
