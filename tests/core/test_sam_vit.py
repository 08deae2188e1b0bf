"""Tests for SAM's ViT image encoder (``fmseg.models.sam_vit``)."""

from __future__ import annotations

import pytest
import torch

from fmseg.models.sam_vit import (
    Attention,
    ImageEncoderViT,
    relative_position_table,
    window_partition,
    window_unpartition,
)

VIT_B_PARAMS = 89_670_912
VIT_B_GLOBAL = (2, 5, 8, 11)


def tiny_encoder(**overrides: object) -> ImageEncoderViT:
    """A small encoder: 64 px, 4x4 tokens, window 4 with one global block."""
    kwargs: dict[str, object] = {
        "img_size": 64,
        "patch_size": 16,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "window_size": 4,
        "global_attn_indexes": (1,),
        "out_chans": 16,
    }
    kwargs.update(overrides)
    torch.manual_seed(0)
    enc = ImageEncoderViT(**kwargs)  # type: ignore[arg-type]
    # Non-zero position tables so the relative-position path is exercised.
    with torch.no_grad():
        for name, param in enc.named_parameters():
            if "rel_pos" in name or name == "pos_embed":
                param.normal_(std=0.1)
    return enc.eval()


@pytest.fixture(scope="module")
def vit_b() -> ImageEncoderViT:
    return ImageEncoderViT()


def test_vit_b_parameter_count(vit_b: ImageEncoderViT) -> None:
    # Layout and numbers against the reference: test_parity.py.
    assert sum(p.numel() for p in vit_b.parameters()) == VIT_B_PARAMS


def test_vit_b_block_kinds(vit_b: ImageEncoderViT) -> None:
    windows = [block.window_size for block in vit_b.blocks]
    assert windows == [0 if i in VIT_B_GLOBAL else 14 for i in range(12)]
    assert vit_b.blocks[0].norm1.eps == 1e-6
    assert vit_b.neck[1].eps == 1e-6


@pytest.mark.slow  # ~20 s on CPU
def test_vit_b_forward_1024(vit_b: ImageEncoderViT) -> None:
    with torch.no_grad():
        out = vit_b.eval()(torch.randn(1, 3, 1024, 1024))
    assert out.shape == (1, 256, 64, 64)


def test_mismatched_shape_names_key() -> None:
    enc = tiny_encoder()
    state = enc.state_dict()
    state["blocks.0.attn.rel_pos_h"] = torch.zeros(5, 16)
    with pytest.raises(RuntimeError, match=r"blocks\.0\.attn\.rel_pos_h"):
        enc.load_state_dict(state, strict=True)


def test_unexpected_and_missing_keys_named() -> None:
    enc = tiny_encoder()
    state = enc.state_dict()
    state["blocks.0.attn.bogus"] = state.pop("blocks.1.mlp.lin2.bias")
    with pytest.raises(RuntimeError) as err:
        enc.load_state_dict(state, strict=True)
    assert "blocks.0.attn.bogus" in str(err.value)
    assert "blocks.1.mlp.lin2.bias" in str(err.value)


def test_tiny_forward_shape_and_block_kinds() -> None:
    enc = tiny_encoder()
    assert [b.window_size for b in enc.blocks] == [4, 0]
    assert enc.blocks[0].attn.rel_pos_h.shape == (7, 16)  # 2 * window - 1, head_dim 16
    assert enc.blocks[1].attn.rel_pos_h.shape == (7, 16)  # 2 * grid(4) - 1
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 16, 4, 4)
    assert torch.isfinite(out).all()


def test_tiny_forward_with_window_padding() -> None:
    # 96 px / 16 -> 6x6 tokens, window 4 -> padded to 8x8 inside windowed blocks.
    enc = tiny_encoder(img_size=96, depth=3, global_attn_indexes=(1,))
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 16, 6, 6)
    assert torch.isfinite(out).all()


def test_tiny_forward_batch_independent() -> None:
    enc = tiny_encoder(img_size=96)
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        full = enc(x)
        single = enc(x[1:2])
    torch.testing.assert_close(full[1:2], single, rtol=1e-4, atol=1e-5)


def test_tiny_forward_other_resolution() -> None:
    enc = tiny_encoder()  # pretrained for 64 px; 80x112 px -> 5x7 tokens
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 80, 112))
    assert out.shape == (1, 16, 5, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("hw", [(8, 8), (6, 9), (3, 3)])
def test_window_roundtrip(hw: tuple[int, int]) -> None:
    x = torch.randn(2, *hw, 5)
    windows, padded = window_partition(x, 4)
    assert padded == (-(-hw[0] // 4) * 4, -(-hw[1] // 4) * 4)
    assert windows.shape == (2 * (padded[0] // 4) * (padded[1] // 4), 4, 4, 5)
    # The first window of the first image is the top-left corner.
    torch.testing.assert_close(windows[0, : min(4, hw[0]), : min(4, hw[1])], x[0, :4, :4])
    torch.testing.assert_close(window_unpartition(windows, 4, padded, hw), x)


def test_relative_position_table_indexing() -> None:
    table = torch.arange(7.0)[:, None].repeat(1, 2)  # row r holds value r
    out = relative_position_table(4, table)
    assert out.shape == (4, 4, 2)
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    torch.testing.assert_close(out[..., 0], (i - j + 3).float())


def naive_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Loop-free but explicit per-position reference of SAM attention on ``(B, H, W, C)``."""
    b, h, w, c = x.shape
    nh = attn.num_heads
    d = c // nh
    qkv = attn.qkv(x).reshape(b, h * w, 3, nh, d)
    q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))  # (B, nh, N, d)
    logits = (q @ k.transpose(-1, -2)) * d**-0.5
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    rh = attn.rel_pos_h[ys[:, None] - ys[None, :] + h - 1]  # (N, N, d)
    rw = attn.rel_pos_w[xs[:, None] - xs[None, :] + w - 1]
    logits = logits + torch.einsum("bhnd,nmd->bhnm", q, rh) + torch.einsum("bhnd,nmd->bhnm", q, rw)
    out = logits.softmax(-1) @ v  # (B, nh, N, d)
    return attn.proj(out.permute(0, 2, 1, 3).reshape(b, h, w, c))


def test_attention_matches_naive_reference() -> None:
    torch.manual_seed(1)
    attn = Attention(dim=24, num_heads=3, rel_pos_size=(5, 6))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
        x = torch.randn(2, 5, 6, 24)
        torch.testing.assert_close(attn(x), naive_attention(attn, x), rtol=1e-4, atol=1e-5)


def test_bad_global_index_rejected() -> None:
    with pytest.raises(ValueError, match="global_attn_indexes"):
        ImageEncoderViT(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(5,))
