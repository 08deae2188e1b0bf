import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fmseg import drain, load_model
from fmseg.incontext import (
    Supports,
    SupportSet,
    UniverSegBackend,
    add_slice,
    build_backend,
    combine,
    segment_slices_iter,
    segment_volume_iter,
)
from fmseg.models.universeg import CrossOp, build_universeg
from fmseg.registry import load_tiny
from fmseg.weights import WeightsError, WeightsSource, resolve


def test_v1_parameter_count():
    # Layout and numbers against the reference: test_parity.py.
    assert sum(p.numel() for p in build_universeg().parameters()) == 1_182_785  # paper: ~1.18 M


def test_reference_checkpoint_through_registry(tmp_path):
    synthetic = {k: torch.randn_like(v) * 0.01 for k, v in build_universeg().state_dict().items()}
    path = tmp_path / "universeg_v1_nf64_ss64_STA.pt"
    torch.save(synthetic, path)
    model = load_model("universeg-v1", checkpoint=path, device="cpu")
    assert torch.equal(model.out_conv.conv.weight, synthetic["out_conv.conv.weight"])
    del synthetic["out_conv.conv.bias"]
    torch.save(synthetic, path)
    with pytest.raises(WeightsError, match="out_conv.conv.bias"):
        load_model("universeg-v1", checkpoint=path)


def test_cross_op_equals_pairwise_concatenated_convolution():
    torch.manual_seed(0)
    op = CrossOp(3, 5, 4)
    t, s = torch.randn(2, 1, 3, 8, 8), torch.randn(2, 6, 5, 8, 8)
    # the reference: conv of every concatenated (target, support) pair, then means
    pairs = torch.stack(
        [torch.stack([op.cross_conv(torch.cat([t[:, 0], s[:, j]], 1)) for j in range(6)], 1)], 1
    )
    new_t, new_s = op(t, s)
    assert torch.allclose(new_t, pairs.mean(2), atol=1e-5)
    assert torch.allclose(new_s, pairs.mean(1), atol=1e-5)
    assert torch.allclose(op.pairs(t, s), pairs, atol=1e-5)


def test_tiny_universeg_shapes_and_last_block_shortcut():
    model = build_universeg(tiny=True)
    x, si, sm = torch.rand(2, 1, 32, 32), torch.rand(2, 3, 1, 32, 32), torch.rand(2, 3, 1, 32, 32)
    assert model(x, si, sm).shape == (2, 1, 32, 32)


def _ball_volume():
    z, y, x = np.mgrid[:16, :40, :40]
    r = 12 - np.abs(z - 8)  # a double cone: the cross-section changes along z
    ball = (y - 20) ** 2 + (x - 20) ** 2 < r**2
    rng = np.random.default_rng(0)
    return (ball * 80.0 + rng.normal(0, 4, ball.shape)).astype(np.float32), ball.astype(np.int32)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_support_set_errors(tmp_path):
    s = SupportSet()
    with pytest.raises(ValueError, match="empty"):
        s.binary()
    with pytest.raises(ValueError, match="no labelled pixel"):
        s.add(np.random.rand(8, 8), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="differ in size"):
        s.add(np.random.rand(8, 8), np.ones((8, 9)))
    with pytest.raises(ValueError, match="2D"):
        s.add(np.random.rand(4, 8, 8), np.ones((4, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        s.add(np.full((8, 8), np.nan), np.ones((8, 8)))
    s.add(np.random.rand(8, 8), np.ones((8, 8)))
    with pytest.raises(ValueError, match="label 3 is absent"):
        s.binary(3)
    with pytest.raises(ValueError, match="every support mask is empty"):
        Supports((np.zeros((4, 4)),), (np.zeros((4, 4), bool),))
    with pytest.raises(ValueError, match="needs both"):
        SupportSet.load(tmp_path / "missing.npz")


def test_add_slice_checks_label_and_range():
    vol, lab = _ball_volume()
    s = SupportSet()
    with pytest.raises(ValueError, match="outside"):
        add_slice(s, vol, lab, 0, 99)
    with pytest.raises(ValueError, match="label 2 is absent"):
        add_slice(s, vol, lab, 0, 8, label=2)
    with pytest.raises(ValueError, match="differ in shape"):
        add_slice(s, vol, lab[:, :10], 0, 8)


def test_support_set_roundtrip(tmp_path):
    vol, lab = _ball_volume()
    s = SupportSet(names={1: "ball"})
    add_slice(s, vol, lab, 0, 6)
    add_slice(s, vol, lab * 2, 0, 10)
    path = s.save(tmp_path / "set")
    assert path.suffix == ".npz" and path.with_suffix(".json").is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["examples"][1]["index"] == 10
    back = SupportSet.load(path)
    assert back.names == {1: "ball"} and back.label_values == [1, 2]
    assert np.array_equal(back.examples[0].image, s.examples[0].image)
    assert back.examples[1].source == s.examples[1].source


@pytest.mark.parametrize("name", ["interpolation", "nearest", "intensity"])
def test_baselines_segment_a_volume(name):
    vol, lab = _ball_volume()
    s = SupportSet()
    for z in (3, 8, 13):
        add_slice(s, vol, lab, 0, z)
    res = drain(segment_volume_iter(build_backend(name), s, vol, axis=0))
    assert res.labels.shape == vol.shape
    assert _dice(res.labels > 0, lab > 0) > 0.85


def test_interpolation_beats_nearest_between_supports():
    vol, lab = _ball_volume()
    s = SupportSet()
    for z in (2, 8):
        add_slice(s, vol, lab, 0, z)
    sl = list(range(3, 8))
    dice = {}
    for name in ("interpolation", "nearest"):
        res = drain(segment_volume_iter(build_backend(name), s, vol, 0, slices=sl))
        dice[name] = _dice(res.labels[sl] > 0, lab[sl] > 0)
    assert dice["interpolation"] > dice["nearest"]


def test_interpolation_needs_positions():
    s = SupportSet()
    s.add(np.random.rand(8, 8), np.ones((8, 8)))
    with pytest.raises(ValueError, match="positions"):
        drain(segment_slices_iter(build_backend("interpolation"), s, np.random.rand(2, 8, 8)))


def test_multilabel_is_one_pass_per_label_then_combined():
    probs = {1: np.array([[0.9, 0.2, 0.6]]), 3: np.array([[0.8, 0.3, 0.7]])}
    assert combine(probs).tolist() == [[1, 0, 3]]
    vol, lab = _ball_volume()
    two = lab.copy()
    two[:, :, 20:] *= 2
    s = SupportSet()
    for z in (4, 8, 12):
        add_slice(s, vol, two, 0, z)
    res = drain(segment_volume_iter(build_backend("interpolation"), s, vol, 0))
    assert sorted(res.probs) == [1, 2]
    assert _dice(res.labels == 2, two == 2) > 0.8 and _dice(res.labels == 1, two == 1) > 0.8


def test_universeg_backend_batches_and_ensembles():
    torch.manual_seed(0)
    model = build_universeg(tiny=True)
    sup = Supports(tuple(np.random.rand(5, 40, 30)), tuple(np.random.rand(5, 40, 30) > 0.5))
    one = UniverSegBackend(model, size=32, batch_images=6)
    q = np.random.rand(3, 50, 20).astype(np.float32)
    p1 = one.predict(one.prepare(sup), q)
    assert p1.shape == (3, 50, 20) and 0 <= p1.min() and p1.max() <= 1
    ens = UniverSegBackend(model, size=32, ensemble=3, subset=2, seed=1)
    state = ens.prepare(sup)
    assert len(state) == 3 and all(len(i) == 2 for i, _ in state)
    assert np.allclose(ens.predict(state, q), ens.predict(ens.prepare(sup), q))
    # batching does not change results
    full = UniverSegBackend(model, size=32, batch_images=100)
    assert np.allclose(full.predict(full.prepare(sup), q), p1, atol=1e-5)


def test_prototype_backend_runs_on_tiny_model():
    vol, lab = _ball_volume()
    s = SupportSet()
    add_slice(s, vol, lab, 0, 8)
    backend = build_backend("prototype", device="cpu", load=load_tiny)
    res = drain(segment_volume_iter(backend, s, vol, 0, slices=[7, 9]))
    assert res.probs[1].shape == vol.shape and np.isfinite(res.probs[1]).all()


def test_progress_reports_every_batch():
    vol, lab = _ball_volume()
    s = SupportSet()
    add_slice(s, vol, lab, 0, 8)
    steps = list(_iterate(segment_volume_iter(build_backend("nearest"), s, vol, 0, batch=4)))
    assert [p.done for p in steps] == [0, 4, 8, 12, 16] and steps[-1].total == 16


def _iterate(gen):
    try:
        while True:
            yield next(gen)
    except StopIteration:
        return


def test_unknown_backend_lists_names():
    with pytest.raises(KeyError, match="interpolation"):
        build_backend("magic")


def test_download_without_published_digest_is_pinned(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"first")
    src = WeightsSource("url", f.as_uri())
    path = resolve(src)
    assert path.read_bytes() == b"first"
    pin = path.with_name(path.name + ".sha256")
    assert pin.is_file()
    path.write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="no longer matches"):
        resolve(src)


def test_resize_of_masks_is_soft():
    from fmseg.incontext.backends import resize

    m = torch.zeros(1, 4, 4)
    m[0, :2, :2] = 1
    r = resize(m, (2, 2), mask=True)
    assert torch.allclose(r, F.avg_pool2d(m[None], 2)[0])


def test_query_slices_outside_the_volume_are_refused():
    vol, lab = _ball_volume()
    s = SupportSet()
    add_slice(s, vol, lab, 0, 8)
    with pytest.raises(ValueError, match="slice 20 is outside 0..15"):
        drain(segment_volume_iter(build_backend("nearest"), s, vol, 0, slices=[3, 20]))
