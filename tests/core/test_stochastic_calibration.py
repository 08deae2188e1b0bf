"""The Tyche sampler applies a checkpoint's stored calibration to every candidate."""

import numpy as np

from fmseg import drain
from fmseg.calibration import apply_calibration, stored_calibration
from fmseg.incontext import SupportSet, add_slice
from fmseg.incontext.segment import binary_supports
from fmseg.incontext.stochastic import TycheBackend, sample_slices_iter
from fmseg.incontext.support import normalise
from fmseg.models.tyche import build_tyche
from fmseg.training.calibrate import write_calibration


def _support_and_queries():
    z, y, x = np.mgrid[:10, :32, :32]
    obj = (y - 16) ** 2 + (x - 16) ** 2 < (9 - np.abs(z - 5)) ** 2
    img = (obj * 80.0 + np.random.default_rng(0).normal(0, 4, obj.shape)).astype(np.float32)
    s = SupportSet()
    for k in (2, 5, 8):
        add_slice(s, img, obj.astype(np.int32), 0, k)
    return s, normalise(img[[4, 6]], (float(img.min()), float(img.max())))


def test_sampler_applies_a_stored_calibration(tmp_path):
    import torch

    model = build_tyche(tiny=True)
    src, dst = tmp_path / "w.pt", tmp_path / "c.pt"
    torch.save({"model": model.state_dict(), "meta": {}}, src)
    cal = {"kind": "isotonic", "x": [0.0, 0.3, 0.6, 1.0], "y": [0.1, 0.2, 0.9, 0.95]}
    write_calibration(src, dst, cal)
    support, queries = _support_and_queries()
    raw = TycheBackend(model, k=4, size=32, seed=1)
    calibrated = TycheBackend(model, k=4, size=32, seed=1, calibration=stored_calibration(dst))
    a = drain(sample_slices_iter(raw, support, queries))
    b = drain(sample_slices_iter(calibrated, support, queries))
    assert b.shape == a.shape == (4, 2, 32, 32) and b.dtype == a.dtype
    assert np.allclose(b, apply_calibration(a, cal), atol=1e-6)
    assert b.min() >= 0.1 - 1e-6 and not np.allclose(a, b)  # the map was really applied
    state = calibrated.prepare(binary_supports(support, None))
    assert np.allclose(calibrated.predict(state, queries), b.mean(0), atol=1e-6)  # mean too


def test_build_sampler_reads_the_calibration_of_real_weights_only(tmp_path):
    import torch

    from fmseg.incontext.factory import build_sampler
    from fmseg.registry import get_spec, load_tiny

    state = torch.load(get_spec("tyche-small").weights.location, weights_only=True)
    cal = {"kind": "temperature", "t": 1.5}
    torch.save({"model": state["model"], "meta": {"calibration": cal}}, tmp_path / "c.pt")
    assert (
        build_sampler("tyche-small", k=2, device="cpu", checkpoint=tmp_path / "c.pt").calibration
        == cal
    )
    assert build_sampler("tyche-small", k=2, device="cpu", load=load_tiny).calibration is None
