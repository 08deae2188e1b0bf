import numpy as np
import pytest
import torch

from fmseg import drain
from fmseg.incontext import SupportSet, add_slice, build_backend
from fmseg.incontext.stochastic import AugmentedSampler, TycheBackend, sample_slices_iter
from fmseg.incontext.support import normalise
from fmseg.models.tyche import build_tyche


def test_v1_parameter_count():
    # Layout and numbers against the reference: test_parity.py.
    assert sum(p.numel() for p in build_tyche().parameters()) == 1_774_785  # paper: ~1.77 M


def test_candidates_interact_only_through_their_mean():
    torch.manual_seed(0)
    model = build_tyche(tiny=True).eval()
    x, si, sm = torch.rand(1, 1, 32, 32), torch.rand(1, 3, 1, 32, 32), torch.rand(1, 3, 1, 32, 32)
    noise = torch.randn(1, 4, 1, 32, 32)
    out = model(x, si, sm, noise)
    assert out.shape == (1, 4, 32, 32)
    # permuting candidates permutes outputs (no candidate is special)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(model(x, si, sm, noise[:, perm]), out[:, perm], atol=1e-5)
    # different noise -> different candidates
    assert (out[0, 0] - out[0, 1]).abs().max() > 1e-4


def _cone():
    z, y, x = np.mgrid[:12, :32, :32]
    obj = (y - 16) ** 2 + (x - 16) ** 2 < (10 - np.abs(z - 6)) ** 2
    img = (obj * 80.0 + np.random.default_rng(0).normal(0, 4, obj.shape)).astype(np.float32)
    return img, obj.astype(np.int32)


def test_tyche_backend_samples_are_reproducible():
    img, lab = _cone()
    s = SupportSet()
    for z in (3, 6, 9):
        add_slice(s, img, lab, 0, z)
    backend = TycheBackend(build_tyche(tiny=True), k=5, size=32, seed=3)
    q = normalise(img[[4, 7]], (float(img.min()), float(img.max())))
    a = drain(sample_slices_iter(backend, s, q, batch=1))
    b = drain(sample_slices_iter(backend, s, q, batch=1))
    assert a.shape == (5, 2, 32, 32) and np.array_equal(a, b)


def test_test_time_sampler_gives_diverse_samples_for_any_backend():
    img, lab = _cone()
    s = SupportSet()
    for z in (2, 4, 6, 8, 10):
        add_slice(s, img, lab, 0, z)
    sampler = AugmentedSampler(build_backend("nearest"), k=6, subset=0.6, seed=0)
    q = normalise(img[[5]], (float(img.min()), float(img.max())))
    samples = drain(sample_slices_iter(sampler, s, q))
    assert samples.shape == (6, 1, 32, 32)
    assert not all(np.array_equal(samples[0], x) for x in samples[1:])


def test_sampling_checks_query_shape():
    s = SupportSet()
    s.add(np.random.rand(8, 8), np.ones((8, 8)))
    with pytest.raises(ValueError, match="stack"):
        drain(sample_slices_iter(AugmentedSampler(build_backend("nearest")), s, np.zeros((8, 8))))


def test_meanconv_split_equals_concatenation():
    import torch

    from fmseg.models.tyche import SetBlock

    torch.manual_seed(0)
    block = SetBlock(3, 3, 8)
    target, support = torch.randn(2, 5, 3, 12, 12), torch.randn(2, 4, 3, 12, 12)
    mean, _ = block.cross(target.mean(dim=1, keepdim=True), support)
    naive = block.meanconv(torch.cat([target, mean.expand(-1, 5, -1, -1, -1)], dim=2))
    assert torch.allclose(block._meanconv(target, mean), naive, atol=1e-5)
    full, _ = block(target, support)
    assert torch.allclose(block.target_only(target, support), full, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 4, 8, 8), (1, 2, 3, 7, 9)])
def test_fast_max_pool_and_group_mean_equal_torch(shape):
    from torch.nn import functional as F

    from fmseg.models.universeg import group_mean, max_pool2

    x = torch.randn(*shape)
    ref = F.max_pool2d(x.flatten(0, 1), 2).unflatten(0, shape[:2])
    assert torch.equal(max_pool2(x), ref)
    cl = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    assert torch.allclose(group_mean(cl), x.mean(1, keepdim=True), atol=1e-6)
