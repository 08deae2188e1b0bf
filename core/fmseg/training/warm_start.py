"""Start a Tyche-TS network from a trained UniverSeg of the same widths.

Tyche-TS is UniverSeg with a noise channel on the target, a LeakyReLU after each CrossOp
(UniverSeg's is linear) and one extra convolution per block (the SetBlock ``meanconv``,
which sees a candidate and the candidates' mean). The UniverSeg weights are copied; the noise
channel gets zero weight; ``meanconv`` passes the mean through (a Dirac kernel); and each
CrossOp's bias is raised by a per-channel shift ``c`` (measured on calibration episodes) that
keeps its outputs positive, where LeakyReLU is the identity, while the convolutions reading
those outputs subtract ``c`` again in their biases. Before training, the network then predicts
what the UniverSeg predicts (exactly in the interior; at the image border, where the zero
padding stands for ``-c``, approximately) with identical candidates; training with the
best-candidate loss spreads them. Tyche trained from scratch on this CPU stayed weaker than
the UniverSeg it shares its shape with.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.tyche import TycheTS
from ..models.universeg import UniverSeg


def tyche_from_universeg(
    universeg: UniverSeg,
    calibration: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    candidate_scale: float = 0.02,
) -> TycheTS:
    """A Tyche-TS initialised from a trained UniverSeg of the same widths.

    Args:
        universeg: The trained network (target channels 1).
        calibration: Episodes ``(target (B, 1, H, W), support images (B, S, 1, H, W),
            support labels (B, S, 1, H, W))`` on which the CrossOp outputs are measured.
        candidate_scale: Scale of the (random, Kaiming) weights with which ``meanconv`` sees
            each candidate's own features; 0 makes the candidates ignore their noise.

    Returns:
        The initialised ``TycheTS`` of the same widths.
    """
    shifts = cross_minima(universeg, calibration)
    model = TycheTS(universeg.widths)
    new = dict(universeg.state_dict())
    w = new["enc_blocks.0.cross.cross_conv.weight"]  # image | (noise) | support image, label
    new["enc_blocks.0.cross.cross_conv.weight"] = torch.cat([w[:, :1], 0 * w[:, :1], w[:, 1:]], 1)
    state = model.state_dict()
    for name, low in shifts.items():
        c = (-low).clamp(min=0) * 1.25 + 0.05  # (C,) keeps LeakyReLU's input positive
        new[f"{name}.cross.cross_conv.bias"] = new[f"{name}.cross.cross_conv.bias"] + c
        for branch in ("target", "support"):
            key = f"{name}.{branch}.vmapped.conv"
            new[f"{key}.bias"] = new[f"{key}.bias"] - (new[f"{key}.weight"].sum((2, 3)) @ c)
        mean_w = f"{name}.meanconv.vmapped.conv.weight"
        new[mean_w] = _mean_passthrough(state[mean_w], candidate_scale)
        new[mean_w.replace("weight", "bias")] = torch.zeros_like(
            state[mean_w.replace("weight", "bias")]
        )
    model.load_state_dict(new, strict=True)
    return model


@torch.no_grad()
def cross_minima(universeg: UniverSeg, calibration) -> dict[str, torch.Tensor]:
    """Per block, the per-channel minimum of its CrossOp's (target, support) pair outputs."""
    minima: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, inputs, _output):
            low = module.pairs(*inputs).transpose(0, 3).flatten(1).min(1).values  # (C,)
            minima[name] = torch.minimum(minima[name], low) if name in minima else low

        return record

    blocks = [(f"enc_blocks.{i}", b) for i, b in enumerate(universeg.enc_blocks)]
    blocks += [(f"dec_blocks.{i}", b) for i, b in enumerate(universeg.dec_blocks)]
    handles = [b.cross.register_forward_hook(hook(n)) for n, b in blocks]
    try:
        for target, images, labels in calibration:
            universeg(target, images, labels)
    finally:
        for h in handles:
            h.remove()
    return minima


def _mean_passthrough(weight: torch.Tensor, candidate_scale: float) -> torch.Tensor:
    """``meanconv`` weight ``(C, Ct + C, 3, 3)``: Kaiming (scaled) on candidates, Dirac on mean."""
    c = weight.shape[0]
    w = torch.empty_like(weight)
    nn.init.kaiming_normal_(w, nonlinearity="leaky_relu")
    w[:, :-c] *= candidate_scale
    w[:, -c:] = 0
    nn.init.dirac_(w[:, -c:])
    return w
