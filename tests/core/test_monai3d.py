import importlib.util

import pytest
import torch

from fmseg.models.monai3d import BatchStatNorm3d, build_swinunetr, build_unet3d

needs_monai = pytest.mark.skipif(
    importlib.util.find_spec("monai") is None or importlib.util.find_spec("einops") is None,
    reason="SwinUNETR needs monai and einops (the 'volumetric' extra)",
)


@needs_monai
def test_tiny_swinunetr_shapes_and_parts():
    torch.manual_seed(0)
    model = build_swinunetr(tiny=True, out_channels=2).eval()
    seen = []
    model.head_conv.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.randn(1, 1, 64, 32, 32)  # the 1/32 bottleneck must hold > 1 voxel
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, 2, 64, 32, 32)
    assert seen[0].shape == (1, 12, 64, 32, 32) and model.feature_channels == 12
    assert set(model.encoder_modules()) == {
        "swinViT",
        "encoder1",
        "encoder2",
        "encoder3",
        "encoder4",
        "encoder10",
    }
    assert list(model.decoder_modules())[-1] == "decoder1"
    assert model.head_conv is model.out.conv.conv


@needs_monai
@pytest.mark.slow  # two SwinUNETR forwards: ~5-15 s on a busy 2-core CPU
def test_tiny_swinunetr_features_reproduce_monai_forward():
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    model = build_swinunetr(tiny=True, out_channels=2).eval()
    # Same keys as MONAI's own SwinUNETR: the published checkpoints' layout.
    reference = SwinUNETR(in_channels=1, out_channels=2, feature_size=12).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 1, 64, 32, 32)
    with torch.no_grad():
        feats = model.features(x)
        expected = reference(x)
    torch.testing.assert_close(model.head_conv(feats), expected)


@needs_monai
def test_swinunetr_rejects_sides_not_divisible_by_32():
    model = build_swinunetr(tiny=True)
    with pytest.raises(ValueError, match="multiples of 32"):
        model.features(torch.zeros(1, 1, 64, 40, 32))


def test_full_size_unet3d_has_the_genesis_widths():
    with torch.device("meta"):  # shapes only, no memory
        unet = build_unet3d().state_dict()
    assert sum(v.numel() for k, v in unet.items() if "running" not in k and "num_b" not in k) == (
        19_073_665
    )
    assert unet["down_tr64.ops.0.conv1.weight"].shape == (32, 1, 3, 3, 3)
    assert unet["down_tr512.ops.1.conv1.weight"].shape == (512, 256, 3, 3, 3)
    assert unet["up_tr256.up_conv.weight"].shape == (512, 512, 2, 2, 2)
    assert unet["up_tr256.ops.0.conv1.weight"].shape == (256, 768, 3, 3, 3)
    assert unet["out_tr.final_conv.weight"].shape == (1, 64, 1, 1, 1)
    assert "down_tr64.ops.0.bn1.running_mean" in unet


def test_tiny_unet3d_shapes_and_parts():
    torch.manual_seed(0)
    model = build_unet3d(tiny=True, out_channels=3).eval()
    x = torch.randn(2, 1, 8, 16, 24)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    assert feats.shape == (2, 8, 8, 16, 24) and model.feature_channels == 8
    assert logits.shape == (2, 3, 8, 16, 24)
    assert list(model.encoder_modules()) == ["down_tr64", "down_tr128", "down_tr256", "down_tr512"]
    assert list(model.decoder_modules()) == ["up_tr256", "up_tr128", "up_tr64"]
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 1, 12, 16, 16))


def test_genesis_norm_uses_batch_statistics_in_eval_and_keeps_buffers():
    norm = BatchStatNorm3d(3).eval()
    x = torch.randn(2, 3, 4, 4, 4) * 5 + 7
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3, 4)), torch.zeros(3), atol=1e-5, rtol=0)
    assert torch.equal(norm.running_mean, torch.zeros(3))  # never updated
