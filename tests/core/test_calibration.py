"""Calibration of probabilities (fmseg.calibration) and its fit script's pieces."""

import numpy as np
import pytest
import torch

from fmseg import calibration as C
from fmseg.training import calibrate as F


def tempered(t_true=2.0, n=200_000, seed=0):
    """Logits whose true probability is sigmoid(z / t_true): overconfident by t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, n)
    y = rng.random(n) < C.sigmoid(z / t_true)
    return z, y


def test_temperature_fit_recovers_a_known_temperature():
    z, y = tempered(2.0)
    cal = C.fit_temperature(z, y)
    assert cal["kind"] == "temperature" and cal["t"] == pytest.approx(2.0, rel=0.05)
    z, y = tempered(0.5, seed=1)
    assert C.fit_temperature(z, y)["t"] == pytest.approx(0.5, rel=0.05)


def test_temperature_scaling_lowers_ece_and_nll():
    z, y = tempered(2.0)
    p = C.sigmoid(z)
    q = C.apply_calibration(p, C.fit_temperature(C.logit(p), y))
    assert C.expected_calibration_error(q, y) < 0.2 * C.expected_calibration_error(p, y)
    assert C.nll(q, y) < C.nll(p, y)


def test_pool_adjacent_violators():
    out = C.pool_adjacent_violators(np.array([1.0, 3, 2, 4, 0]), np.ones(5))
    assert np.allclose(out, [1, 2.25, 2.25, 2.25, 2.25])
    assert np.allclose(
        C.pool_adjacent_violators(np.array([1.0, 3, 2, 4]), np.ones(4)), [1, 2.5, 2.5, 4]
    )
    assert np.allclose(
        C.pool_adjacent_violators(np.array([2.0, 0]), np.array([3.0, 1])), [1.5, 1.5]
    )


def test_isotonic_is_monotone_and_lowers_ece_on_held_out_data():
    rng = np.random.default_rng(0)
    true = rng.random(400_000)
    y = rng.random(true.size) < true
    p = true**3  # badly miscalibrated, but ranks right
    cal = C.fit_isotonic(p[::2], y[::2])
    assert cal["kind"] == "isotonic" and len(cal["x"]) <= 1000
    assert np.all(np.diff(cal["x"]) > 0) and np.all(np.diff(cal["y"]) >= 0)
    grid = C.apply_calibration(np.linspace(0, 1, 101), cal)
    assert np.all(np.diff(grid) >= 0)
    before = C.expected_calibration_error(p[1::2], y[1::2])
    after = C.expected_calibration_error(C.apply_calibration(p[1::2], cal), y[1::2])
    assert before > 0.1 and after < 0.01


def test_ece_and_reliability_on_known_cases():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    assert C.expected_calibration_error(p, rng.random(p.size) < p) < 0.01
    assert C.expected_calibration_error(np.full(10, 0.9), np.zeros(10)) == pytest.approx(0.9)
    r = C.reliability(np.array([0.05, 0.07, 0.95]), np.array([0, 1, 1]), bins=10)
    assert r["count"][0] == 2 and r["count"][9] == 1 and sum(r["count"]) == 3
    assert r["accuracy"][0] == 0.5 and r["confidence"][0] == pytest.approx(0.06)
    assert r["accuracy"][5] is None and len(r["edges"]) == 11
    with pytest.raises(ValueError, match="same size"):
        C.expected_calibration_error(np.zeros(3), np.zeros(4))


def test_apply_keeps_shape_and_dtype_and_rejects_unknown_kinds():
    p = np.random.default_rng(0).random((3, 2, 8, 8)).astype(np.float32)
    assert C.apply_calibration(p, None) is p
    q = C.apply_calibration(p, {"kind": "temperature", "t": 1.0})
    assert q.shape == p.shape and q.dtype == np.float32 and np.allclose(q, p, atol=1e-5)
    with pytest.raises(ValueError, match="unknown calibration kind 'platt'"):
        C.apply_calibration(p, {"kind": "platt"})


def test_stored_calibration_and_atomic_write(tmp_path):
    src, dst = tmp_path / "w.pt", tmp_path / "c.pt"
    torch.save({"model": {"a": torch.ones(2)}, "meta": {"step": 3}}, src)
    assert C.stored_calibration(src) is None and C.stored_calibration(tmp_path / "no.pt") is None
    cal = {"kind": "temperature", "t": 1.5}
    F.write_calibration(src, dst, cal)
    assert C.stored_calibration(dst) == cal and C.stored_calibration(src) is None
    state = torch.load(dst, weights_only=True)
    assert state["meta"]["step"] == 3 and torch.equal(state["model"]["a"], torch.ones(2))
    assert not list(tmp_path.glob("*.tmp"))


def test_choose_prefers_a_calibration_for_overconfident_candidates():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (40, 1, 16, 16))
    labels = rng.random((40, 16, 16)) < C.sigmoid(z[:, 0] / 2)
    probs = np.repeat(C.sigmoid(z), 3, axis=1)  # (E, K, H, W), K = 3 equal candidates
    cal, info = F.choose(probs, labels)
    assert info["chosen"] != "none" and cal is not None
    assert info["selection_nll"][info["chosen"]] < info["selection_nll"]["none"]
    report = F.scores(probs, labels, cal)
    assert report["ece"] < F.scores(probs, labels, None)["ece"]
