"""The Slicer module's prefetch helper (plain Python: loaded from its file, no Slicer needed)."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fmseg import Session, drain
from fmseg.registry import load_tiny

FILE = Path(__file__).resolve().parents[2] / "slicer_module/FMSeg/FMSegLib/prefetch.py"


def _module():
    spec = importlib.util.spec_from_file_location("fmseg_slicer_prefetch", FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeLogic:
    """What prefetch_iter needs of FMSegLogic: a session made on first use."""

    def __init__(self, array):
        self.session = Session.from_registry(array, load=load_tiny)

    def session_iter(self, volume):
        return self.session
        yield  # a generator, like FMSegLogic.session_iter


def test_prefetch_embeds_the_volume_on_disk_and_follows_focus(tmp_path, monkeypatch):
    monkeypatch.setenv("FMSEG_CACHE", str(tmp_path))
    prefetch = _module()
    array = np.random.default_rng(0).normal(size=(5, 9, 7)).astype(np.float32)
    logic = FakeLogic(array)
    volume = SimpleNamespace(node_id="vtkMRMLScalarVolumeNode1", array=array)
    assert not prefetch.focus(logic, volume.node_id, 0, 1)  # nothing runs yet
    work = prefetch.prefetch_iter(logic, volume, axis=0, index=4)
    first = next(work)
    assert first.total == 5 and "encoding 5 of 5" in first.message
    assert prefetch.focus(logic, volume.node_id, 0, 0)
    next(work)
    assert logic.session.is_embedded(0, 0)  # the new focus came first
    assert not logic.session.is_embedded(0, 4)
    assert drain(work) == 5
    assert len(list((tmp_path / "embeddings").glob("*/*.pt"))) == 5
