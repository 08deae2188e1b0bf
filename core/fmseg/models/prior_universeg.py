"""The prior-conditioned in-context network: UniverSeg with interaction channels on the query.

The body is :class:`~fmseg.models.universeg.UniverSeg` whose target (query) input has six
channels instead of one: the image, a prior mask, its closeness, positive and negative clicks
and a box (:data:`CHANNELS`), as MultiverSeg (Wong et al., ICCV 2025) and ScribblePrompt (ECCV
2024) give the network the previous prediction and the user's interactions next to the context
set. Supports stay (image, mask) pairs.

The output is a *correction* of the prior:
``logits = k * body(...) + [prior] * (a0 + a1 * c + (g0 + g1 * c) * s)``, where ``s`` is the
prior's signed distance in pixels (clipped to the ramp, :mod:`fmseg.incontext.prior`), ``c``
its closeness, and ``k``, ``a0, a1``, ``g0, g1`` are learnt scalars; the skip has the form of
the fitted interpolation rule (a threshold that moves with the distance to the annotations).
It starts with ``k = 0.1`` and ``g = (1, 4)``, so a network warm-started from
``incontext-small`` first reproduces the interpolation where there is a prior and the plain
network's masks where there is none (scaling logits keeps their sign). A plain network fed the
prior only through its first layer learnt to use it too slowly on a CPU budget (held-out
interleaved episodes after 900 steps: 0.50 with the prior against 0.61 for the prior alone),
and with ``k = 1`` the warm body's large logits (median 9.6) outvoted the prior (0.54 after
330 steps). The body's weight is ``k = k0 + k1 * [clicks]``: queries with clicks need the body
(only it sees them), and with one shared ``k`` click training raised it for every query,
letting the body outvote good priors. A previous prediction fed back after a click
(closeness 1) goes through the body only: sharing the skip with it taught the skip to
distrust every prior.

Shapes: query ``(B, 6, H, W)``, supports ``(B, S, 1, H, W)`` twice, output ``(B, 1, H, W)``
logits.
"""

from __future__ import annotations

import torch
from torch import nn

from .universeg import UniverSeg

#: The query input channels, in order (built by :func:`fmseg.incontext.prior.query_channels`).
CHANNELS = ("image", "prior", "closeness", "positive", "negative", "box")
RAMP = 8.0  # pixels: the prior channel is clip(0.5 + sdf / (2 * RAMP), 0, 1)


class PriorUniverSeg(nn.Module):
    """UniverSeg body on six query channels plus a learnt skip from the prior.

    Args:
        widths: Feature width of each encoder level of the body.
    """

    def __init__(self, widths=(16, 16, 16, 16)):
        super().__init__()
        self.body = UniverSeg(widths, target_channels=len(CHANNELS))
        self.body_scale = nn.Parameter(torch.tensor([0.1, 0.0]))  # k0, k1 (with clicks)
        self.prior_bias = nn.Parameter(torch.tensor([0.0, 0.0]))  # a0, a1
        self.prior_gain = nn.Parameter(torch.tensor([1.0, 4.0]))  # g0, g1

    def forward(
        self, query: torch.Tensor, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> torch.Tensor:
        """``(B, 6, H, W), (B, S, 1, H, W), (B, S, 1, H, W) -> (B, 1, H, W)`` logits."""
        prior, near = query[:, 1:2], query[:, 2:3]
        # the skip is for interpolated priors (closeness < 1); a previous prediction
        # (closeness 1) reaches the output only through the body
        has = ((near > 0) & (near < 1)).to(query.dtype)
        sdf = (prior - 0.5) * (2 * RAMP)
        gain = self.prior_gain[0] + self.prior_gain[1] * near
        bias = self.prior_bias[0] + self.prior_bias[1] * near
        clicked = (query[:, 3:5].flatten(1).amax(1) > 0).to(query.dtype)[:, None, None, None]
        k = self.body_scale[0] + self.body_scale[1] * clicked
        body = self.body(query, support_images, support_labels)
        return k * body + has * (bias + gain * sdf)


def build_prior_universeg(tiny: bool = False, width: int = 16) -> PriorUniverSeg:
    """``incontext-prior``: width 16 (``tiny``: 4), six query channels."""
    w = 4 if tiny else width
    return PriorUniverSeg((w, w, w, w))


def widen_first_layer(model: PriorUniverSeg, plain_state: dict[str, torch.Tensor]):
    """Load a one-channel UniverSeg state dict of the same width into ``model.body``.

    The first CrossOp's weight is ``(C, C_target + 2, k, k)``; the image channel and the two
    support channels are copied and the new query channels start at zero, so without a prior
    the network first computes exactly what the plain one did.
    """
    state = dict(plain_state)
    key = "enc_blocks.0.cross.cross_conv.weight"
    w = state[key]
    extra = len(CHANNELS) - 1
    zeros = torch.zeros(w.shape[0], extra, *w.shape[2:], dtype=w.dtype)
    state[key] = torch.cat([w[:, :1], zeros, w[:, 1:]], dim=1)
    model.body.load_state_dict(state, strict=True)
    return model


def upgrade_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint with one scalar body scale -> ``(k0, k1 = 0)`` (same outputs without clicks)."""
    state = dict(state)
    k = state.get("body_scale")
    if k is not None and k.dim() == 0:
        state["body_scale"] = torch.stack([k, torch.zeros_like(k)])
    return state
