"""Tyche initialised from a trained UniverSeg (``fmseg.training.warm_start``)."""

import pytest
import torch

from fmseg.models.universeg import UniverSeg
from fmseg.training.warm_start import tyche_from_universeg


def _episode(seed: int, b: int = 2, s: int = 3, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 1, size, size, generator=g)
    images = torch.rand(b, s, 1, size, size, generator=g)
    labels = (torch.rand(b, s, 1, size, size, generator=g) > 0.5).float()
    return target, images, labels


def _block_inputs(unet: UniverSeg, episode) -> dict[str, tuple]:
    """The (target, support) each UniverSeg block receives on ``episode``."""
    seen, handles = {}, []
    for kind in ("enc_blocks", "dec_blocks"):
        for i, block in enumerate(getattr(unet, kind)):

            def keep(_module, inputs, name=f"{kind}.{i}"):
                seen[name] = tuple(x.detach().clone() for x in inputs)

            handles.append(block.register_forward_pre_hook(keep))
    with torch.no_grad():
        unet(*episode)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("name", ["enc_blocks.0", "enc_blocks.2", "dec_blocks.0", "dec_blocks.1"])
def test_each_block_reproduces_universeg_inside_the_border(name):
    torch.manual_seed(0)
    unet = UniverSeg((4, 4, 4, 4)).eval()
    episode = _episode(1)
    tyche = tyche_from_universeg(unet, [episode], candidate_scale=0.0)
    target, support = _block_inputs(unet, episode)[name]
    k = 5
    candidates = target.expand(-1, k, -1, -1, -1)
    if name == "enc_blocks.0":  # the image gains a noise channel
        candidates = torch.cat([candidates, torch.randn_like(candidates)], 2)
    kind, i = name.split(".")
    with torch.no_grad():
        want, want_s = getattr(unet, kind)[int(i)](target, support)
        got, got_s = getattr(tyche, kind)[int(i)](candidates, support)
    inner = (..., slice(2, -2), slice(2, -2))  # two 3x3 convolutions: the border differs
    for c in range(k):  # every candidate, whatever its noise
        torch.testing.assert_close(got[:, c][inner], want[:, 0][inner], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_s[inner], want_s[inner], atol=1e-4, rtol=1e-4)


def test_candidates_start_identical_and_noise_can_split_them():
    torch.manual_seed(0)
    unet = UniverSeg((4, 4, 4, 4)).eval()
    episode = _episode(2)
    target, images, labels = episode
    noise = torch.randn(2, 4, 1, 32, 32)
    with torch.no_grad():
        same = tyche_from_universeg(unet, [episode], 0.0)(target, images, labels, noise)
        spread = tyche_from_universeg(unet, [episode], 0.5)(target, images, labels, noise)
    torch.testing.assert_close(same, same[:, :1].expand_as(same), atol=1e-5, rtol=1e-5)
    assert (spread - spread[:, :1]).abs().amax() > 1e-3
