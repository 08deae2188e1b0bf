import numpy as np
import pytest

from fmseg import metrics as M
from fmseg import uncertainty as U


def test_mean_variance_entropy():
    s = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert np.allclose(U.mean_probability(s), [0, 0.5, 1])
    assert np.allclose(U.variance(s), [0, 0.25, 0])
    e = U.entropy(s)
    assert e[1] == pytest.approx(1.0) and e[0] < 1e-4 and e[2] < 1e-4


def test_diversity_and_pairwise_dice():
    same = np.ones((3, 4, 4))
    assert U.diversity(same) == 0.0
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[:2], b[2:] = 1, 1
    assert U.diversity(np.stack([a, b])) == 1.0
    assert M.pairwise_dice(np.stack([a, a, b]))[0, 1] == 1.0


def test_best_candidate_dice_and_ged():
    gt = np.zeros((8, 8))
    gt[2:6, 2:6] = 1
    wrong = np.zeros((8, 8))
    wrong[0, 0] = 1
    samples = np.stack([wrong, gt])
    assert M.best_candidate_dice(samples, gt) == 1.0
    # K copies of a perfect prediction: GED 0; mixing in a wrong candidate raises it
    assert M.ged(np.stack([gt, gt]), gt) == pytest.approx(0.0)
    assert M.ged(samples, gt) > 0
    # two references (raters): a set covering both beats copies of one
    alt = np.zeros((8, 8))
    alt[2:7, 2:7] = 1
    refs = np.stack([gt, alt])
    assert M.ged(np.stack([gt, alt]), refs) < M.ged(np.stack([gt, gt]), refs)


def test_auroc_matches_pair_counting():
    rng = np.random.default_rng(0)
    score = rng.random(200)
    pos = rng.random(200) < score  # informative score
    pairs = [(s1 > s0) + 0.5 * (s1 == s0) for s1 in score[pos] for s0 in score[~pos]]
    assert M.auroc(score, pos) == pytest.approx(np.mean(pairs))
    assert M.auroc(np.r_[0, 0, 1, 1], np.r_[False, True, False, True]) == 0.5
    with pytest.raises(ValueError, match="both"):
        M.auroc(score, np.ones(200, bool))


def test_error_rate_by_decile():
    score = np.arange(100.0)
    err = score >= 90
    rates = M.error_rate_by_decile(score, err)
    assert rates[-1] == 1.0 and rates[0] == 0.0 and len(rates) == 10


def test_stack_shape_checked():
    with pytest.raises(ValueError, match="stack"):
        U.mean_probability(np.zeros(3))
