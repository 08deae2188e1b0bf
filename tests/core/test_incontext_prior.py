"""The prior-conditioned in-context path: prior maps, backends, auto routing, corrections."""

import numpy as np
import pytest
import torch

from fmseg.incontext import SupportSet, add_slice, build_backend, segment_volume_iter
from fmseg.incontext.auto import AutoBackend
from fmseg.incontext.backends import Supports
from fmseg.incontext.correct import add_corrected_slice, affected_slices, correct_slice
from fmseg.incontext.prior import (
    CHANNELS,
    RAMP,
    Clicks,
    closeness,
    corrective_click,
    interpolate,
    interpolate_masks,
    prior_from_sdf,
    query_channels,
    signed_distance,
)
from fmseg.incontext.prior_backend import (
    FITTED,
    FittedInterpolationBackend,
    PriorBackend,
)
from fmseg.models.prior_universeg import build_prior_universeg, widen_first_layer
from fmseg.models.universeg import UniverSeg
from fmseg.progress import drain
from fmseg.registry import load_tiny


def disc(r, shape=(40, 40), centre=(20, 20)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r**2


def cone_volume(depth=30, side=40):
    """A cone along axis 0: radius grows with the slice index; image = mask + noise."""
    c = (side // 2, side // 2)
    labels = np.stack([disc(3 + i // 3, (side, side), c) for i in range(depth)]).astype(np.int32)
    rng = np.random.default_rng(0)
    image = labels * 100.0 + rng.normal(0, 5, labels.shape)
    return image.astype(np.float32), labels


def test_interpolation_mixes_signed_distances_by_slice_distance():
    a, b = signed_distance(disc(4)), signed_distance(disc(12))
    mid = interpolate(15, [(10, a), (20, b)])
    assert mid.bracketed and mid.distance == 5
    assert (mid.sdf > 0).sum() == pytest.approx(disc(8).sum(), rel=0.15)
    beyond = interpolate(26, [(10, a), (20, b)])
    assert not beyond.bracketed and beyond.distance == 6
    np.testing.assert_array_equal(beyond.sdf, b)
    on = interpolate(10, [(10, a), (20, b)])
    assert on.distance == 0 and on.bracketed
    with pytest.raises(ValueError, match="no annotated slice"):
        interpolate(3, [])


def test_prior_channels_encode_contour_distance_clicks_and_box():
    sdf = signed_distance(disc(8))
    prior = prior_from_sdf(sdf)
    assert prior[20, 20] == 1.0 and prior[0, 0] == 0.0
    assert abs(prior[20, 28] - 0.5) <= 1 / (2 * RAMP) + 1e-6  # the contour maps to 0.5
    x = query_channels(
        np.zeros((40, 40)), prior, closeness(3), Clicks(((5, 5),), ((30, 30),), (1, 2, 10, 12))
    )
    assert x.shape == (len(CHANNELS), 40, 40)
    assert x[2].max() == pytest.approx(0.25)
    assert x[3, 5, 5] == 1 and x[3, 30, 30] == 0 and x[4, 30, 30] == 1
    assert x[5, 1:11, 2:13].all() and x[5].sum() == 10 * 11
    empty = query_channels(np.zeros((8, 8)))
    assert not empty[1:].any()


def test_corrective_click_goes_to_the_largest_error_region():
    truth = disc(10)
    pred = truth.copy()
    pred[disc(4, centre=(20, 20))] = False  # a hole: missed pixels
    pred[0:3, 0:3] = True  # a small false positive
    (r, c), positive = corrective_click(pred, truth)
    assert positive and (r - 20) ** 2 + (c - 20) ** 2 <= 4
    assert corrective_click(truth, truth) is None


def test_widened_network_starts_as_the_plain_one_and_adds_the_prior():
    torch.manual_seed(0)
    plain = UniverSeg((4, 4, 4, 4))
    wide = widen_first_layer(build_prior_universeg(tiny=True), plain.state_dict())
    q = torch.rand(2, len(CHANNELS), 32, 32)
    q[:, 1:] = 0  # no prior, no clicks: exactly the plain network
    si, sm = torch.rand(2, 3, 1, 32, 32), (torch.rand(2, 3, 1, 32, 32) > 0.5).float()
    k = float(wide.body_scale.detach()[0])  # no clicks: k0 scales logits, masks unchanged
    ref = plain(q[:, :1], si, sm)
    torch.testing.assert_close(wide(q, si, sm), k * ref, atol=1e-5, rtol=1e-4)
    q[:, 1], q[:, 2] = 1.0, 0.5  # a prior everywhere inside, 1 slice away
    skip = wide(q, si, sm) - k * wide.body(q, si, sm)
    (g0, g1), (a0, a1) = wide.prior_gain.detach(), wide.prior_bias.detach()
    expected = float(a0 + a1 * 0.5 + (g0 + g1 * 0.5) * RAMP)
    torch.testing.assert_close(skip, torch.full_like(skip, expected))


def volume_support(image, labels, idx, source="vol"):
    s = SupportSet()
    for i in idx:
        add_slice(s, image, labels, 0, i, (0, 100), source=source)
    return s


def test_auto_takes_the_prior_path_only_near_annotations_of_the_same_volume():
    image, labels = cone_volume(60)
    prior = PriorBackend(load_tiny("incontext-prior"), size=32, reach=5)
    auto = AutoBackend(prior)
    support = volume_support(image, labels, [10, 20])
    res = drain(segment_volume_iter(auto, support, image, 0, (0, 100), source="vol"))
    assert res.paths[15] == "prior" and res.paths[24] == "prior" and res.paths[26] == "in-context"
    assert res.path_counts() == {"prior": 21, "in-context": 39}  # slices 5-25
    other = drain(segment_volume_iter(auto, support, image, 0, (0, 100), source="other"))
    assert other.path_counts() == {"in-context": 60}


def test_more_than_eight_supports_use_the_nearest_eight():
    image, labels = cone_volume(30)
    backend = PriorBackend(load_tiny("incontext-prior"), size=32)
    support = volume_support(image, labels, range(0, 30, 3))
    from fmseg.incontext.segment import binary_supports

    state = backend.prepare(binary_supports(support, 1))
    subset = backend._subset(state, ("vol", 0, 28))
    assert subset == tuple(range(2, 10))  # supports at slices 6..27, not 0 and 3


def test_fitted_interpolation_follows_its_rule():
    image, labels = cone_volume(30, side=128)  # the backend's working size: no resizing
    support = volume_support(image, labels, [6, 24])
    backend = FittedInterpolationBackend()
    res = drain(segment_volume_iter(backend, support, image, 0, (0, 100), source="vol"))
    sdf = interpolate_masks(15, [6, 24], [labels[6] > 0, labels[24] > 0])
    np.testing.assert_allclose(res.probs[1][15], FITTED.probability(sdf), atol=1e-5)
    assert FITTED.probability(sdf)[64, 64] > 0.9 and FITTED.probability(sdf)[0, 0] < 0.1
    with pytest.raises(ValueError, match="positions"):
        backend.prepare(Supports((image[0] / 100,), (labels[5] > 0,)))


def test_factory_builds_the_new_backends():
    auto = build_backend("auto", load=load_tiny)
    assert isinstance(auto, AutoBackend) and auto.name == "auto"
    assert isinstance(build_backend("incontext-prior", load=load_tiny), PriorBackend)
    assert build_backend("interpolation-fitted").name == "interpolation-fitted"


def test_clicks_change_the_slice_and_the_corrected_slice_joins_the_support_set():
    image, labels = cone_volume(30)
    backend = build_backend("auto", load=load_tiny)
    support = volume_support(image, labels, [5, 25])
    before = correct_slice(backend, support, image, 0, 15, Clicks(((1, 1),)), None, (0, 100))
    after = correct_slice(
        backend, support, image, 0, 15, Clicks(((1, 1),), ((20, 20),)), before, (0, 100)
    )
    assert before.shape == (40, 40) and not np.allclose(before, after)
    with pytest.raises(ValueError, match="no click"):
        correct_slice(backend, support, image, 0, 15, Clicks(), None, (0, 100))
    with pytest.raises(ValueError, match="does not take clicks"):
        correct_slice(build_backend("nearest"), support, image, 0, 15, Clicks(((1, 1),)))
    src = support.examples[0].source
    assert affected_slices(support, src, 0, 15, 30) == [*range(6, 15), *range(16, 25)]
    changed = add_corrected_slice(support, image, labels[15] > 0, 0, 15, 1, (0, 100), src)
    assert changed == [*range(6, 15), *range(16, 25)]
    assert [e.index for e in support.examples] == [5, 25, 15]
    with pytest.raises(ValueError, match="empty"):
        add_corrected_slice(support, image, np.zeros((40, 40), bool), 0, 16, 1, (0, 100), src)


def test_queries_with_clicks_weigh_the_body_by_k0_plus_k1():
    from fmseg.models.prior_universeg import upgrade_state

    torch.manual_seed(1)
    model = build_prior_universeg(tiny=True)
    with torch.no_grad():
        model.body_scale.copy_(torch.tensor([0.1, 0.5]))
    q = torch.zeros(2, len(CHANNELS), 32, 32)
    q[:, 0] = torch.rand(32, 32)
    q[1, 3, 10, 10] = 1.0  # a click on the second query only
    si, sm = torch.rand(2, 2, 1, 32, 32), (torch.rand(2, 2, 1, 32, 32) > 0.5).float()
    body = model.body(q, si, sm)
    out = model(q, si, sm)
    torch.testing.assert_close(out[0], 0.1 * body[0])
    torch.testing.assert_close(out[1], 0.6 * body[1])
    old = {**model.state_dict(), "body_scale": torch.tensor(0.3)}  # a one-scale checkpoint
    assert upgrade_state(old)["body_scale"].tolist() == pytest.approx([0.3, 0.0])
