"""Synthetic checkpoints in each published layout, built from the key names of the real ones.

Sources of the layouts: MrGiovanni/SuPreM direct_inference/inference.py and
ljwztc/CLIP-Driven-Universal-Model model/Universal_model.py (``net`` / ``module.backbone.``);
jusiro/fewshot-finetuning main_pretrain.py + utils/models.py (``module.`` + ``classifier``);
MONAI ``SwinUNETR.load_from`` (``model_swinvit.pt``: ``module.layers1.0.blocks.0.mlp.fc1``);
Project-MONAI/research-contributions SwinUNETR/Pretrain/models/ssl_head.py (``swin_vit.``).
"""

import importlib.util

import pytest
import torch

from fmseg.adapters.remap import detect_format, load_volumetric_checkpoint, remap_checkpoint
from fmseg.models.hdbet import build_hdbet
from fmseg.models.monai3d import build_swinunetr, build_unet3d
from fmseg.weights import WeightsError

needs_monai = pytest.mark.skipif(
    importlib.util.find_spec("monai") is None or importlib.util.find_spec("einops") is None,
    reason="SwinUNETR needs monai and einops",
)


def _randomised(model):
    """The model's state with every float tensor replaced by distinct random values."""
    g = torch.Generator().manual_seed(1)
    return {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


def _assert_landed(model, source, names):
    own = model.state_dict()
    for name in names:
        assert torch.equal(own[name], source[name]), name


@pytest.fixture(scope="module")
def swin_source():
    return _randomised(build_swinunetr(tiny=True)) if importlib.util.find_spec("monai") else None


@needs_monai
def test_universal_swinunetr_checkpoint(swin_source, tmp_path):
    # SuPreM / CLIP-Driven: {"net": {"module.backbone.swinViT...", text-driven head}}, no "out".
    net = {"module.backbone." + k: v for k, v in swin_source.items() if not k.startswith("out.")}
    net["module.organ_embedding"] = torch.randn(32, 512)
    net["module.precls_conv.0.weight"] = torch.randn(12)
    net["module.controller.weight"] = torch.randn(153, 512, 1, 1, 1)
    path = tmp_path / "supervised_suprem_swinunetr_2100.pth"
    torch.save({"net": net, "epoch": 2100}, path)
    assert detect_format(torch.load(path, weights_only=True)) == "universal"

    model = build_swinunetr(tiny=True)
    report = load_volumetric_checkpoint(model, path)
    body = [k for k in swin_source if not k.startswith("out.")]
    _assert_landed(model, swin_source, body)
    assert report.format == "universal" and report.encoder_fraction == 1.0
    assert sorted(report.missing) == ["out.conv.conv.bias", "out.conv.conv.weight"]
    assert "Universal Model" in report.dropped["module.organ_embedding"]
    assert set(report.dropped) == {
        "module.organ_embedding",
        "module.precls_conv.0.weight",
        "module.controller.weight",
    }


def test_universal_unet_checkpoint_with_foreign_head():
    source = _randomised(build_unet3d(tiny=True, out_channels=32))
    net = {"module.backbone." + k: v for k, v in source.items()}
    net["module.GAP.3.weight"] = torch.randn(256, 64, 1, 1, 1)
    model = build_unet3d(tiny=True)  # one binary logit: the 32-class head cannot fit
    report = load_volumetric_checkpoint(model, {"net": net}, fmt="suprem")
    _assert_landed(model, source, [k for k in source if not k.startswith("out_tr.")])
    assert "shape (32, 8, 1, 1, 1)" in report.dropped["module.backbone.out_tr.final_conv.weight"]
    assert sorted(report.missing) == ["out_tr.final_conv.bias", "out_tr.final_conv.weight"]


@needs_monai
def test_fseft_checkpoint_head_loads_when_classes_match(swin_source):
    raw = {
        "module." + k.replace("out.conv.conv.", "classifier."): v for k, v in swin_source.items()
    }
    raw["module.classifier.weight"] = torch.randn(29, 12, 1, 1, 1)
    raw["module.classifier.bias"] = torch.randn(29)
    assert detect_format(raw) == "fseft"

    binary = build_swinunetr(tiny=True)
    report = load_volumetric_checkpoint(binary, raw)
    assert "does not fit out.conv.conv.weight" in report.dropped["module.classifier.weight"]
    _assert_landed(binary, swin_source, [k for k in swin_source if not k.startswith("out.")])

    organs = build_swinunetr(tiny=True, out_channels=29)
    report = load_volumetric_checkpoint(organs, raw, fmt="fseft")
    assert not report.missing and not report.dropped
    assert torch.equal(organs.head_conv.weight, raw["module.classifier.weight"])


def test_fseft_unet3d_classifier_maps_to_out_tr():
    source = _randomised(build_unet3d(tiny=True))
    raw = {k.replace("out_tr.", "classifier."): v for k, v in source.items()}
    assert detect_format(raw) == "fseft"
    model = build_unet3d(tiny=True)
    report = load_volumetric_checkpoint(model, {"state_dict": raw})
    assert not report.missing
    _assert_landed(model, source, list(source))


@needs_monai
def test_monai_ssl_model_swinvit_checkpoint(swin_source):
    # model_swinvit.pt: {"state_dict": {"module.layers1.0.blocks.0.mlp.fc1.weight", ...}}.
    ssl = {
        "module." + k[len("swinViT.") :].replace(".mlp.linear", ".mlp.fc"): v
        for k, v in swin_source.items()
        if k.startswith("swinViT.")
    }
    assert "module.layers1.0.blocks.0.mlp.fc1.weight" in ssl
    ssl["module.rotation_head.weight"] = torch.randn(4, 96)
    ckpt = {"state_dict": ssl, "epoch": 5000}
    assert detect_format(ckpt) == "monai-ssl"

    model = build_swinunetr(tiny=True)
    report = load_volumetric_checkpoint(model, ckpt)
    swin_keys = [k for k in swin_source if k.startswith("swinViT.")]
    _assert_landed(model, swin_source, swin_keys)
    assert set(report.loaded) == set(swin_keys)
    assert "decoder1.conv_block.conv1.conv.weight" in report.missing  # CNN decoder: not in SSL
    assert report.dropped == {"module.rotation_head.weight": "no counterpart in this model"}
    assert report.encoder_fraction > 0.5


@needs_monai
def test_monai_ssl_head_checkpoint(swin_source):
    # A Pretrain/main.py checkpoint of SSLHead: swin_vit.* plus its three pretext heads.
    sd = {k.replace("swinViT.", "swin_vit."): v for k, v in swin_source.items() if "swinViT" in k}
    sd |= {
        "rotation_head.weight": torch.randn(4, 96),
        "contrastive_head.weight": torch.randn(512, 96),
        "conv.0.weight": torch.randn(48, 96, 3, 3, 3),
    }
    ckpt = {"epoch": 100, "state_dict": {"module." + k: v for k, v in sd.items()}, "optimizer": {}}
    assert detect_format(ckpt) == "monai-ssl-head"
    model = build_swinunetr(tiny=True)
    report = load_volumetric_checkpoint(model, ckpt)
    _assert_landed(model, swin_source, [k for k in swin_source if k.startswith("swinViT.")])
    assert len(report.dropped) == 3


@needs_monai
def test_native_btcv_checkpoint_drops_14_class_head(swin_source):
    source = dict(swin_source)
    source["out.conv.conv.weight"] = torch.randn(14, 12, 1, 1, 1)
    source["out.conv.conv.bias"] = torch.randn(14)
    assert detect_format({"state_dict": source}) == "native"
    model = build_swinunetr(tiny=True)
    tensors, report = remap_checkpoint({"state_dict": source}, model)
    assert len(tensors) == len(source) - 2 and len(report.dropped) == 2
    assert "loaded" in report.summary() and "100% of the encoder" in report.summary()


def test_unrelated_checkpoint_raises_a_useful_error():
    hdbet = build_hdbet(tiny=True).state_dict()
    assert detect_format(hdbet) == "unknown"
    with pytest.raises(WeightsError, match="checkpoint mismatch.*down_tr64"):
        load_volumetric_checkpoint(build_unet3d(tiny=True), {"model": hdbet})


def test_wrong_model_size_is_reported_as_shape_mismatch():
    wide = build_unet3d(tiny=True).state_dict()
    with pytest.raises(WeightsError, match="wrong shape.*another model size"):
        with torch.device("meta"):
            big = build_unet3d(tiny=False)
        remap_checkpoint(wide, big)


def test_unknown_format_name_and_unreadable_file(tmp_path):
    with pytest.raises(WeightsError, match="unknown checkpoint format"):
        remap_checkpoint({}, build_unet3d(tiny=True), fmt="nnunet")
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_volumetric_checkpoint(build_unet3d(tiny=True), bad)
