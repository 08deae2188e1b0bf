"""The two uncertainty maps front ends show, their legends and display ramp; boundary-band AUROC."""

import numpy as np
import pytest

from fmseg import metrics as M
from fmseg import uncertainty as U


def test_agreeing_unsure_candidates_have_no_disagreement_but_total_uncertainty():
    agree = np.full((8, 4, 4), 0.7)  # the reported liver: every candidate says 0.7
    split = np.stack([np.ones((4, 4))] * 4 + [np.zeros((4, 4))] * 4)  # half and half, certain
    assert U.uncertainty_map(agree, "disagreement").max() < 1e-6
    assert U.uncertainty_map(agree, "total") == pytest.approx(0.881, abs=1e-3)
    assert U.uncertainty_map(split, "disagreement") == pytest.approx(1.0, abs=1e-4)
    assert U.uncertainty_map(split, "total") == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_array_equal(
        U.uncertainty_map(agree), U.uncertainty_map(agree, "disagreement")
    )
    np.testing.assert_allclose(U.uncertainty_map(split, "total"), U.entropy(split), atol=1e-6)
    assert U.uncertainty_map(agree).dtype == np.float32 and U.uncertainty_map(agree).shape == (4, 4)


def test_disagreement_never_exceeds_total():
    s = np.random.default_rng(0).random((6, 32, 32))
    d, t = U.uncertainty_map(s, "disagreement"), U.uncertainty_map(s, "total")
    assert (d >= 0).all() and (d <= t + 1e-6).all() and t.max() <= 1


def test_legends_say_what_zero_and_one_bit_mean():
    assert list(U.MAPS) == ["disagreement", "total"] and U.DEFAULT_MAP == "disagreement"
    assert U.legend("disagreement").text == (
        "disagreement (bits): 0 = all candidates agree; 1 bit = candidates split evenly"
        " between structure and background"
    )
    total = U.legend("total")
    assert total.title == "total uncertainty" and total.zero == "certain"
    assert total.top.startswith("probability 0.5")
    with pytest.raises(ValueError, match="unknown uncertainty map 'entropy': choose one of"):
        U.uncertainty_map(np.zeros((2, 3)), "entropy")
    with pytest.raises(ValueError, match="unknown uncertainty map"):
        U.legend("variance")


def test_colour_ramp_is_transparent_at_zero_and_grows():
    ramp = U.colour_ramp(256)
    assert ramp.shape == (256, 4) and ramp[0, 3] == 0 and ramp[-1, 3] > 0.5
    assert (np.diff(ramp[:, 3]) >= 0).all() and ramp.min() >= 0 and ramp.max() <= 1
    values, colours = U.ramp_controls()
    assert values[0] == U.DISPLAY_RANGE[0] and values[-1] == U.DISPLAY_RANGE[1]
    assert colours.shape == (len(values), 4)


def _disc(radius: float, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.hypot(y - size / 2, x - size / 2) <= radius


def test_boundary_band_both_sides_per_slice():
    ref = np.stack([_disc(20), np.zeros((64, 64), bool), np.ones((64, 64), bool)])
    band = M.boundary_band(ref, width=3)
    assert band.shape == ref.shape and not band[1].any() and not band[2].any()
    y, x = np.mgrid[:64, :64]
    r = np.hypot(y - 32, x - 32)
    assert band[0][(r > 17.5) & (r < 22.5)].all()  # both sides of the edge
    assert not band[0][(r < 16) | (r > 24)].any()
    inner = M.interior(ref, 3)
    assert inner[0].sum() == (ref[0] & ~band[0]).sum() and inner[2].all()
    assert M.boundary_band(ref[0], 3).shape == (64, 64)
    with pytest.raises(ValueError, match="band width must be > 0"):
        M.boundary_band(ref, 0)


def test_band_auroc_ignores_easy_pixels_far_from_the_boundary():
    ref = _disc(20, 200)[None]
    pred = _disc(22, 200)[None]  # too large by 2 pixels: errors on a ring outside
    error = pred != ref
    near = M.boundary_band(ref, 10)
    good = np.where(error, 1.0, 0.0)
    bad = np.where(near, 1.0, 0.0)  # lights the whole band, errors or not
    assert M.band_auroc(good, error, ref) == 1.0
    assert M.band_auroc(bad, error, ref) == 0.5
    assert M.auroc(bad, error) > 0.95  # over every pixel, lighting the band looks good
    with pytest.raises(ValueError, match="shapes differ"):
        M.band_auroc(good[0], error, ref)
    with pytest.raises(ValueError, match="both"):
        M.band_auroc(good, np.zeros_like(error), ref)


def test_fraction_above():
    score = np.array([0.1, 0.6, 0.9, 0.2])
    assert M.fraction_above(score, np.array([1, 1, 1, 0], bool)) == pytest.approx(2 / 3)
    assert np.isnan(M.fraction_above(score, np.zeros(4, bool)))
