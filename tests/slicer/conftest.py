"""Fixtures for the FMSeg Slicer module's Logic on real MRML scenes (PyPI ``slicer-core``).

Install the environment with ``bash .ci/install-slicer`` and run ``bash .ci/test-slicer``.
Without slicer-core every test here is skipped (``slicer_helpers`` skips the importing module);
this conftest itself imports nothing from Slicer, so collection never fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[1] / "slicer_module" / "FMSeg"
for folder in (MODULE_DIR, HERE):  # FMSegLib, and slicer_helpers for the test modules
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

_RULES_REGISTERED = False


def _register_converter_rules() -> None:
    """What Slicer's Segmentations module does at startup (once per process)."""
    import slicer

    global _RULES_REGISTERED
    if _RULES_REGISTERED:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    for rule in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
    ):
        factory.RegisterConverterRule(rule())
    _RULES_REGISTERED = True


@pytest.fixture
def scene():
    """A fresh MRML scene set as ``slicer.mrmlScene`` (slicer.util helpers use it)."""
    from slicer_helpers import slicer  # skips without slicer-core

    _register_converter_rules()
    s = slicer.vtkMRMLScene()
    # The Sequences module registers its browser node in the app; do it here.
    s.RegisterNodeClass(slicer.vtkMRMLSequenceBrowserNode())
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = s
    yield s
    s.Clear(1)
    slicer.mrmlScene = previous


@pytest.fixture
def phantom(scene):
    """An oblique, anisotropic volume with a bright ellipsoid on noise, and its truth mask."""
    from slicer_helpers import add_volume, ball

    truth = ball()
    rng = np.random.default_rng(0)
    image = truth * 200.0 + rng.normal(0, 10, truth.shape)
    return add_volume(scene, image), truth


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """fmseg's cache (adapter embeddings, fetched weights) in the test's folder, never online."""
    monkeypatch.setenv("FMSEG_CACHE", str(tmp_path_factory.mktemp("fmseg-cache")))
    monkeypatch.setenv("FMSEG_OFFLINE", "1")
