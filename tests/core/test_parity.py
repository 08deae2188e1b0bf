"""Parity with the reference implementations (segment-anything, LiteMedSAM, UniverSeg, Tyche).

Each fixture in ``tests/fixtures/reference_<model>.npz`` holds a reference model's state dict
(under the reference's own key names), seeded inputs and the reference's outputs, recorded
once by ``tests/fixtures/make_reference_outputs.py`` (see the README there). These tests never
fetch or import reference code: they load the recorded state dict strictly through fmseg's own
loading path (the registry's ``load_model`` where a registry entry exists, else
``apply_state_dict``), run fmseg's module on the same inputs and compare.

Tolerance: fmseg computes the same functions in a different order (PyTorch's fused attention
instead of an explicit softmax, cross-convolutions split into one convolution per side,
channels-last layouts), so float32 results differ by rounding only: at most 2e-6 relative to
the largest output (values and observed differences in the fixtures' README).
``atol = rtol = 1e-5`` leaves headroom for other CPUs and BLAS builds, while a real difference
(a missing bias, a transposed table, a wrong scale) moves outputs by far more: a single bias
changed by 1e-3 already fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fmseg.models.mask_decoder import MaskDecoder
from fmseg.models.prompt_encoder import PromptEncoder
from fmseg.models.sam import SamModel
from fmseg.models.sam_vit import ImageEncoderViT
from fmseg.models.tiny_vit import TinyViT
from fmseg.models.tyche import TycheTS
from fmseg.models.universeg import UniverSeg
from fmseg.registry import REGISTRY, load_model
from fmseg.weights import WeightsSource, apply_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOL = {"atol": 1e-5, "rtol": 1e-5}

# The recorded configurations (make_reference_outputs.py), in fmseg's argument names.
INCONTEXT_WIDTHS = (6, 8, 10, 12)
INCONTEXT_INPUTS = ("target_image", "support_images", "support_labels")
SAM_CASES = ("points", "box", "points_box", "box_mask")


class Fixture:
    """One recorded reference: ``state`` tensors, ``inputs`` and ``outputs`` by name."""

    def __init__(self, name: str) -> None:
        with np.load(FIXTURES / f"reference_{name}.npz") as data:
            arrays = {k: torch.from_numpy(data[k]) for k in data.files}
        self.state, self.inputs, self.outputs = (
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
            for prefix in ("state", "input", "output")
        )


@cache
def fixture(name: str) -> Fixture:
    return Fixture(name)


def small_sam() -> SamModel:
    encoder = ImageEncoderViT(
        img_size=48,
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=2,
        window_size=4,  # 6x6 tokens: windowed blocks pad to 8x8
        global_attn_indexes=(1,),
        out_chans=32,
    )
    prompts = PromptEncoder(32, (6, 6), (48, 48), mask_in_chans=8)
    return SamModel(encoder, prompts, MaskDecoder(32, 3, depth=2, num_heads=2, mlp_dim=64))


def small_tinyvit() -> TinyViT:
    return TinyViT(
        img_size=64,
        embed_dims=(8, 16, 16, 32),
        depths=(1, 2, 1, 0),
        num_heads=(1, 2, 2, 4),
        window_sizes=(5, 5, 16, 4),  # stage 1: 32x32 tokens pad to 35x35; stage 2: one window
        strides=(2, 2, 2),  # the reference strides 1 only into 320/448/576 channels
        out_chans=16,
    )


#: Fixture name -> (registry entry whose loading path it goes through, or None for the plain
#: strict ``apply_state_dict``; fmseg's small configuration; key the published file wraps the
#: state dict under). The one place each recorded configuration is written.
MODELS: dict[str, tuple[str | None, Callable[[], nn.Module], str | None]] = {
    "sam": ("sam-vit-b", small_sam, None),
    "tinyvit": (None, small_tinyvit, None),  # LiteMedSAM's encoder alone: no entry of its own
    "universeg": ("universeg-v1", lambda: UniverSeg(INCONTEXT_WIDTHS), None),
    "tyche": ("tyche-v1", lambda: TycheTS(INCONTEXT_WIDTHS), "model"),
}

#: One output per case: (fixture, the loaded model's part run (None: the model), its
#: recorded inputs in call order, the recorded output compared).
CASES = {
    "sam-image-encoder": ("sam", "image_encoder", ("image",), "embedding"),
    "sam-forward": ("sam", None, ("image", "boxes"), "forward"),  # batched like the ref's loop
    "litemedsam-tinyvit": ("tinyvit", None, ("image",), "embedding"),
    "universeg": ("universeg", None, INCONTEXT_INPUTS, "logits"),
    "tyche": ("tyche", None, (*INCONTEXT_INPUTS, "noise"), "logits"),
}


def via_registry(name: str, builder, state, tmp_path: Path, key: str | None = None):
    """Save ``state`` as a checkpoint and load it through ``load_model``'s strict path.

    The registry entry ``name`` keeps everything but its builder (the small configuration)
    and its weights (the saved file, wrapped under ``key`` as the published file is).
    """
    path = tmp_path / f"{name}.pt"
    torch.save({key: state} if key else state, path)
    spec = replace(
        REGISTRY[name], builder=builder, weights=WeightsSource("file", str(path), key=key)
    )
    return load_model(name, device="cpu", registry={name: spec})


def load_reference(name: str, tmp_path: Path) -> nn.Module:
    """fmseg's small model of fixture ``name`` holding the recorded state, in eval mode."""
    entry, build, key = MODELS[name]
    state = fixture(name).state
    if entry is None:
        model = build()
        apply_state_dict(model, state, what=f"{name} reference")
        return model.eval()
    return via_registry(entry, lambda tiny: build(), state, tmp_path, key)


@pytest.fixture
def sam(tmp_path):
    return load_reference("sam", tmp_path)


@pytest.mark.parametrize(("name", "part", "inputs", "output"), CASES.values(), ids=CASES.keys())
@torch.no_grad()
def test_module_matches_reference(name, part, inputs, output, tmp_path):
    ref = fixture(name)
    model = load_reference(name, tmp_path)
    module = model if part is None else getattr(model, part)
    out = module(*(ref.inputs[k] for k in inputs))
    torch.testing.assert_close(out, ref.outputs[output], **TOL)


@pytest.mark.parametrize("case", SAM_CASES)
@torch.no_grad()
def test_sam_prompt_encoder_and_decoder_match_segment_anything(sam, case):
    ref = fixture("sam")
    inp = ref.inputs
    want = {k.split("/")[1]: v for k, v in ref.outputs.items() if k.startswith(case + "/")}
    coords, labels, boxes = inp["points_coords"], inp["points_labels"], inp["boxes"]
    points = {"points": (coords, labels), "points_box": (coords[:, :2], labels[:, :2])}.get(case)
    boxes = None if case == "points" else boxes
    masks = inp["mask_logits"] if case == "box_mask" else None
    multimask = case in ("points", "points_box")

    sparse, dense = sam.prompt_encoder(points, boxes, masks)
    torch.testing.assert_close(sparse, want["sparse"], **TOL)
    torch.testing.assert_close(dense, want["dense"], **TOL)
    # Decoded against the recorded embedding, so the decoder is checked on its own.
    embedding = ref.outputs["embedding"][:1]
    logits, iou = sam.decode(
        embedding, points=points, boxes=boxes, mask_logits=masks, multimask=multimask
    )
    assert logits.shape[1] == (3 if multimask else 1)
    torch.testing.assert_close(logits, want["logits"], **TOL)
    torch.testing.assert_close(iou, want["iou"], **TOL)


@pytest.mark.parametrize("name", MODELS)
def test_fixture_weights_are_not_trivial(name):
    # A parity test passes vacuously if a bias or table is all zeros in both models.
    trivial = [
        k
        for k, v in fixture(name).state.items()
        if v.is_floating_point() and ((v == 0).all() or (v == 1).all())
    ]
    assert not trivial
