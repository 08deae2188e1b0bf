import copy
import importlib.util
import os

import pytest
import torch

from fmseg.interactive import accel
from fmseg.interactive.accel import (
    build_encoder,
    export_onnx,
    fuse_for_inference,
    onnx_path,
    weights_key,
)
from fmseg.interactive.predictor import SamPredictor
from fmseg.models.tiny_vit import TinyViT
from fmseg.registry import load_model

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")


def randomise(m: torch.nn.Module) -> torch.nn.Module:
    """Random BN statistics and attention biases, so that fusion really has work to do."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
            if hasattr(mod, "attention_biases"):
                mod.attention_biases.normal_()
    return m


@pytest.fixture
def model():
    torch.manual_seed(0)
    return randomise(load_model("litemedsam", tiny=True, device="cpu"))


def state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_fused_encoder_equals_original_and_leaves_it_alone(model):
    before = state(model)
    fused = fuse_for_inference(model.image_encoder)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want, got = model.image_encoder(x), fused(x)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fused_windows_with_padding():
    torch.manual_seed(1)  # grids 20 and 10 with 3x3 windows: padded right and bottom
    enc = randomise(TinyViT(40, (8, 16, 16, 32), (1, 1, 1, 1), (1, 2, 2, 2), (4, 3, 3, 3)).eval())
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(fuse_for_inference(enc)(x), enc(x), atol=1e-4, rtol=0)


def test_fusing_a_training_model_copies_it(model):
    model.train()
    fused = fuse_for_inference(model)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not fused.training and not any(p.requires_grad for p in fused.parameters())
    assert fused.image_encoder is not model.image_encoder


def test_decoder_can_share_the_encoder(model):
    fused = fuse_for_inference(model, fuse_encoder=False)
    assert fused.image_encoder is model.image_encoder
    assert all(p.requires_grad for p in model.image_encoder.parameters())


@pytest.mark.parametrize(
    "prompt",
    [
        {"boxes": torch.tensor([[5.0, 6.0, 50.0, 40.0]])},
        {"points": (torch.tensor([[[20.0, 30.0], [40.0, 10.0]]]), torch.tensor([[1, 0]]))},
        {"boxes": torch.tensor([[5.0, 6.0, 50.0, 40.0]]), "mask_logits": torch.randn(1, 1, 64, 64)},
        {"boxes": torch.tensor([[5.0, 6.0, 50.0, 40.0]]), "multimask": True},
    ],
)
def test_fused_decoder_equals_original(model, prompt):
    fused = fuse_for_inference(model)
    emb = torch.randn(1, 32, 16, 16)
    with torch.inference_mode():
        want = model.decode(emb, **prompt)
        for _ in range(2):  # the second call reuses the embedding's cached projections
            got = fused.decode(emb, **prompt)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


def test_decoder_cache_sees_a_changed_embedding(model):
    fused = fuse_for_inference(model)
    emb, box = torch.randn(1, 32, 16, 16), torch.tensor([[5.0, 6.0, 50.0, 40.0]])
    with torch.inference_mode():
        fused.decode(emb, boxes=box)
        emb.mul_(-1.0)  # same tensor object, new content
        got, want = fused.decode(emb, boxes=box)[0], model.decode(emb, boxes=box)[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_weights_key_follows_the_weights(model):
    enc = model.image_encoder
    key = weights_key(enc)
    assert weights_key(copy.deepcopy(enc)) == key  # same weights, same key
    with torch.no_grad():
        next(enc.parameters()).add_(1e-3)
    assert weights_key(enc) != key
    assert onnx_path(enc).name.endswith(weights_key(enc) + ".onnx")


@needs_ort
def test_onnx_encoder_equals_torch(model):
    enc = build_encoder(model.image_encoder, "onnx")
    assert isinstance(enc, accel.OrtEncoder)
    assert enc.path.parent == accel.cache_dir() / "onnx"
    x = torch.rand(3, 3, 64, 64)  # dynamic batch axis
    with torch.no_grad():
        torch.testing.assert_close(enc(x), model.image_encoder(x), atol=1e-4, rtol=0)


@needs_ort
def test_export_is_cached_and_atomic(model, monkeypatch):
    enc = model.image_encoder
    target = onnx_path(enc)
    real_export = torch.onnx.export

    def broken(*args, **kwargs):
        real_export(*args, **kwargs)  # writes the temporary file, then "crashes"
        raise RuntimeError("crash during export")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="crash"):
        export_onnx(enc)
    assert not target.exists() and os.listdir(target.parent) == []
    monkeypatch.setattr(torch.onnx, "export", real_export)
    assert export_onnx(enc) == target and os.listdir(target.parent) == [target.name]
    monkeypatch.setattr(torch.onnx, "export", broken)
    assert export_onnx(enc) == target  # cached: no second export


def test_backend_choice_and_fallbacks(model, monkeypatch):
    enc = model.image_encoder
    with pytest.raises(ValueError, match="backend"):
        build_encoder(enc, "tensorrt")
    assert isinstance(build_encoder(enc, "torch"), torch.nn.Module)
    assert isinstance(build_encoder(enc, "auto"), torch.nn.Module)  # test-sized: torch
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.warns(UserWarning, match="onnxruntime"):
        assert isinstance(build_encoder(enc, "onnx"), torch.nn.Module)
    with pytest.warns(UserWarning, match="CPU only"):
        assert isinstance(build_encoder(enc, "onnx", device="meta"), torch.nn.Module)


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnx", marks=needs_ort)])
def test_predictor_backends_agree(model, backend):
    pred = SamPredictor(model, encoder_backend=backend)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = model.image_encoder(x)
    torch.testing.assert_close(pred.embed_batch(x), want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="backend"):
        SamPredictor(model, encoder_backend="fast")
