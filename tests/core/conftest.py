import os
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (DATA / "lits117_ct.nii.gz").is_file():
        pytest.skip("../shared/data is absent (real-data tests need it)")
    return DATA


@pytest.fixture
def sphere_volume() -> np.ndarray:
    """(12, 48, 48) float volume: bright ball of radius 10 on noise, centre (6, 24, 24)."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:12, :48, :48]
    ball = ((z - 6) * 2.0) ** 2 + (y - 24) ** 2 + (x - 24) ** 2 < 10**2
    return (ball * 100.0 + rng.normal(0, 5, ball.shape)).astype(np.float32)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FMSEG_CACHE", os.fspath(tmp_path / "cache"))
    monkeypatch.setenv("FMSEG_OFFLINE", "1")  # weights: never a network download in tests
