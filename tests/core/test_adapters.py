"""Adapter methods, trainer and checkpoints on tiny random-weight bases (fast invariants)."""

import copy

import numpy as np
import pytest
import torch

from fmseg.adapters import methods as M
from fmseg.adapters.api import (
    AdapterError,
    build_adapted,
    load_adapter,
    save_adapter,
    train_adapter_iter,
)
from fmseg.adapters.bases import AdapterConfig
from fmseg.adapters.data import Annotation, AnnotationError, volume_sample
from fmseg.adapters.trainer import TrainingError, TrainSettings
from fmseg.progress import Cancelled, drain
from fmseg.registry import load_tiny

ALL = ["decoder", "linear-probe", "spatial-adapter", "bitfit", "norm-affine", "lora", "arena"]
FAST = TrainSettings(steps=4, eval_every=2, batch_size=2, patch=32)


def _annotation(slices=(1, 3, 5, 6)):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(8, 48, 48)).astype(np.float32)
    lab = np.zeros((8, 48, 48), np.uint8)
    lab[:, 14:30, 10:34] = 2
    img[lab == 2] += 2.0
    return Annotation(img, lab, 2, axis=0, slices=slices)


def _batch(model):
    torch.manual_seed(1)
    if model.dims == 2:
        s = model.net.img_size
        return {"image": torch.rand(1, 3, s, s), "box": torch.tensor([[10.0, 12.0, 40.0, 44.0]])}
    return {"image": torch.randn(1, 1, 32, 32, 32)}


def _train(method, base, **cfg):
    config = AdapterConfig(method=method, **cfg)
    return drain(train_adapter_iter([_annotation()], base, config, FAST, load=load_tiny))


@pytest.mark.parametrize("base", ["litemedsam", "hdbet"])
@pytest.mark.parametrize("method", ALL)
def test_only_intended_parameters_change(base, method):
    torch.manual_seed(0)
    model = build_adapted(base, AdapterConfig(method=method), load=load_tiny)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    from fmseg.adapters.api import make_feeder
    from fmseg.adapters.trainer import train_iter

    drain(train_iter(model, make_feeder(model, [_annotation()], FAST), FAST))
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in trainable.items())
    assert all(torch.equal(dict(model.named_buffers())[n], b) for n, b in buffers.items())
    assert sum(model.trainable.values()) == sum(v.numel() for v in trainable.values())


@pytest.mark.parametrize("base", ["litemedsam", "hdbet"])
@pytest.mark.parametrize("method", ["lora", "arena", "bitfit", "norm-affine"])
def test_zero_initialised_adapters_leave_output_unchanged(base, method):
    torch.manual_seed(0)
    plain = build_adapted(base, AdapterConfig(method="decoder"), load=load_tiny)
    torch.manual_seed(0)  # same random base weights; adapters are initialised after them
    adapted = build_adapted(base, AdapterConfig(method=method), load=load_tiny)
    assert len(list(adapted.parameters())) >= len(list(plain.parameters()))
    if plain.head is not None:
        torch.nn.init.normal_(plain.head.conv.weight)
        adapted.head = copy.deepcopy(plain.head)
    b = _batch(plain)
    with torch.no_grad():
        assert torch.allclose(plain(b), adapted(b), atol=1e-6)


def test_spatial_adapter_starts_as_its_probe():
    model = build_adapted("hdbet", AdapterConfig(method="spatial-adapter"), load=load_tiny)
    torch.nn.init.normal_(model.head.probe.conv.weight)
    feats = torch.randn(1, model.net.feature_channels, 8, 8, 8)
    assert torch.equal(model.head(feats), model.head.probe(feats))


@pytest.mark.parametrize("method", ["lora", "arena"])
def test_merged_equals_unmerged(method):
    res = _train(method, "hdbet")
    model = res.model
    for m in M.arena_layers(model) + [m for m in model.modules() if hasattr(m, "lora_B")]:
        if hasattr(m, "lora_B") and isinstance(m.lora_B, torch.nn.ModuleDict):
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.1)
        elif isinstance(m, M.ArenaLoRA):
            torch.nn.init.normal_(m.lora_B, std=0.1)
    b = _batch(model)
    with torch.no_grad():
        before = model(b)
        M.merge_adapters(model.net)
        after = model(b)
    assert not list(M.unmerged_names(model.net))
    assert torch.allclose(before, after, atol=1e-4)
    # Merged weights keep the base model's parameter names.
    assert set(model.net.state_dict()) == set(
        build_adapted("hdbet", AdapterConfig(), load=load_tiny).net.state_dict()
    )


def test_peft_lora_merge_unmerge_round_trip():
    pytest.importorskip("peft")
    model = build_adapted("litemedsam", AdapterConfig(method="lora"), load=load_tiny)
    layers = [m for m in model.modules() if hasattr(m, "merge") and hasattr(m, "lora_A")]
    for m in layers:
        torch.nn.init.normal_(m.lora_B["default"].weight, std=0.1)
    b = _batch(model)
    with torch.no_grad():
        base = model(b)
        for m in layers:
            m.merge()
        merged = model(b)
        for m in layers:
            m.unmerge()
        unmerged = model(b)
    assert torch.allclose(base, merged, atol=1e-4) and torch.allclose(base, unmerged, atol=1e-5)


def test_arena_prox_shrinks_rank():
    torch.manual_seed(0)
    layer = M.ArenaLoRA(torch.nn.Linear(16, 8), r=6)
    with torch.no_grad():
        layer.lora_v.copy_(torch.tensor([0.05, -0.2, 1.0, 0.01, -0.9, 0.3]))
    layer.prox(0.1)
    assert layer.rank == 4
    assert torch.allclose(layer.lora_v, torch.tensor([0.0, -0.1, 0.9, 0.0, -0.8, 0.2]))


def test_arena_reports_final_rank_after_strong_penalty():
    res = _train("arena", "litemedsam", arena_l1=500.0, rank=4)
    assert res.ranks and max(res.ranks) < 4
    assert res.metrics()["arena_ranks"] == res.ranks


def test_training_lowers_the_loss():
    settings = TrainSettings(steps=40, eval_every=10, batch_size=4, patience=10, augment=False)
    config = AdapterConfig(method="linear-probe")
    res = drain(train_adapter_iter([_annotation()], "hdbet", config, settings, load=load_tiny))
    losses = [h["loss"] for h in res.history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_progress_then_cancel_writes_nothing(tmp_path):
    work = train_adapter_iter([_annotation()], "litemedsam", AdapterConfig(), FAST, load=load_tiny)
    steps = []
    with pytest.raises(Cancelled):
        drain(work, on_progress=steps.append, should_stop=lambda: len(steps) >= 2)
    # Only the embedding cache (FMSEG_CACHE is tmp_path/cache in these tests), no adapter.
    assert [p.name for p in tmp_path.iterdir()] in ([], ["cache"])


@pytest.mark.parametrize("base", ["litemedsam", "hdbet"])
def test_checkpoint_round_trip(tmp_path, base):
    res = _train("lora" if base == "hdbet" else "spatial-adapter", base)
    path = save_adapter(tmp_path / "a.pt", res.model, res.metrics())
    assert path.stat().st_size < 2_000_000
    loaded = load_adapter(path, load=load_tiny)
    b = _batch(res.model)
    with torch.no_grad():
        assert torch.allclose(res.model(b), loaded(b), atol=1e-6)
    assert loaded.metrics["steps_run"] == res.steps_run
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".part"]


def test_adapter_for_another_base_is_refused(tmp_path):
    res = _train("bitfit", "litemedsam")
    path = save_adapter(tmp_path / "a.pt", res.model)
    with pytest.raises(AdapterError, match="trained for 'litemedsam', not for 'hdbet'"):
        load_adapter(path, base="hdbet", load=load_tiny)
    with pytest.raises(AdapterError, match="other 'litemedsam' weights"):
        load_adapter(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AdapterError, match="not a readable adapter"):
        load_adapter(tmp_path / "junk.pt", load=load_tiny)


def test_bad_annotations_are_named():
    a = _annotation()
    with pytest.raises(AnnotationError, match="label value 7 does not occur"):
        drain(train_adapter_iter([Annotation(a.image, a.labels, 7)], load=load_tiny))
    lab = np.zeros_like(a.labels)
    lab[2, 5, 5] = 1
    with pytest.raises(AnnotationError, match="only 1 voxels"):
        drain(train_adapter_iter([Annotation(a.image, lab, 1)], load=load_tiny))
    with pytest.raises(AnnotationError, match="shapes differ"):
        drain(train_adapter_iter([Annotation(a.image, a.labels[:, :40], 2)], load=load_tiny))
    with pytest.raises(AnnotationError, match="outside"):
        drain(train_adapter_iter([Annotation(a.image, a.labels, 2, slices=(99,))], load=load_tiny))
    with pytest.raises(M.MethodError, match="unknown adapter method"):
        drain(train_adapter_iter([a], config=AdapterConfig(method="magic"), load=load_tiny))
    with pytest.raises(M.MethodError, match="already trains the whole decoder"):
        AdapterConfig(method="lora+decoder").methods()
    with pytest.raises(M.MethodError, match="prompt-free head does not use the mask decoder"):
        AdapterConfig(method="decoder", head="auto").resolved_head(2)
    assert AdapterConfig(method="lora", where="encoder", head="auto").resolved_head(2) == "auto"
    b = Annotation(a.image, a.labels, 2, axis=1, slices=(20,))
    with pytest.raises(AnnotationError, match="one axis"):
        drain(train_adapter_iter([a, b], "hdbet", load=load_tiny))


def test_nan_loss_is_reported(monkeypatch):
    from fmseg.adapters import trainer

    def nan_loss(logits, target, weight):
        return logits.sum() * float("nan")

    monkeypatch.setattr(trainer, "dice_bce_loss", nan_loss)
    config = AdapterConfig("linear-probe")
    with pytest.raises(TrainingError, match="NaN"):
        drain(train_adapter_iter([_annotation()], "hdbet", config, FAST, load=load_tiny))


def test_sparse_slices_map_to_model_grid():
    a = _annotation(slices=(2, 6))
    a = Annotation(a.image, a.labels, 2, axis=0, slices=(2, 6), spacing=(3.0, 1.5, 1.5))
    s = volume_sample(a, 1.5)
    known = s.weight[0].amax(dim=(1, 2)).nonzero().flatten().tolist()
    assert known == [4, 12]  # 2 * 3 mm / 1.5 mm, 6 * 3 / 1.5
    assert s.image.shape[1:] == (16, 48, 48)  # 8 slices of 3 mm -> 16 of 1.5 mm
    assert s.target[0, 4].sum() > 0 and s.target[0, 5].sum() == 0


def test_volume_prediction_whole_and_sliding_agree():
    from fmseg.adapters.predict import predict_volume_iter

    res = _train("linear-probe", "hdbet")
    vol = _annotation().image
    whole = drain(predict_volume_iter(res.model, vol, (1.0, 1.0, 1.0), 1.5))
    steps = []
    slid = drain(
        predict_volume_iter(res.model, vol, (1.0, 1.0, 1.0), 1.5, (16, 32, 32)), steps.append
    )
    assert whole.shape == slid.shape == vol.shape
    assert len(steps) > 1 and np.abs(whole - slid).max() < 0.2  # instance norm sees other crops


def test_patchwise_decoding_matches_training_crops():
    from fmseg.adapters.bases import decode_by_patches

    res = _train("bitfit", "hdbet")
    assert res.model.config.patch == FAST.patch  # recorded so apply decodes at that size
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        whole = res.model({"image": x})
        one = decode_by_patches(res.model, x, patch=32)  # one window: the same computation
        four = decode_by_patches(res.model, x, patch=16)
    assert torch.allclose(whole, one, atol=1e-5)
    assert four.shape == whole.shape and not torch.allclose(whole, four, atol=1e-3)


def test_best_state_is_a_snapshot_not_the_live_weights():
    model = build_adapted("hdbet", AdapterConfig(method="linear-probe"), load=load_tiny)
    state = model.adapter_state()
    with torch.no_grad():
        model.head.conv.weight.add_(1.0)
    assert not torch.equal(state["head.conv.weight"], model.head.conv.weight)


def test_a_training_step_describes_itself_once_for_every_front_end():
    from fmseg.adapters.trainer import TrainStep

    assert TrainStep(3, 10, "", loss=0.51234).describe() == "step 3/10: loss 0.512"
    step = TrainStep(4, 10, "", loss=0.5, val_dice=0.8766)
    assert step.describe() == "step 4/10: loss 0.500, validation Dice 0.877"
