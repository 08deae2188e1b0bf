"""The prior-conditioned in-context network: UniverSeg with interaction channels on the query.

The architecture is :class:`~fmseg.models.universeg.UniverSeg` whose target (query) input has
six channels instead of one: the image, a prior mask, its closeness, positive and negative
clicks and a box (:data:`CHANNELS`), as MultiverSeg (Wong et al., ICCV
2025) and ScribblePrompt (ECCV 2024) give the network the previous prediction and the user's
interactions next to the context set. Supports stay (image, mask) pairs.

Shapes: query ``(B, 6, H, W)``, supports ``(B, S, 1, H, W)`` twice, output ``(B, 1, H, W)``
logits.
"""

from __future__ import annotations

import torch

from .universeg import UniverSeg

#: The query input channels, in order (built by :func:`fmseg.incontext.prior.query_channels`).
CHANNELS = ("image", "prior", "closeness", "positive", "negative", "box")


def build_prior_universeg(tiny: bool = False, width: int = 16) -> UniverSeg:
    """``incontext-prior``: width 16 (``tiny``: 4), six query channels."""
    w = 4 if tiny else width
    return UniverSeg((w, w, w, w), target_channels=len(CHANNELS))


def widen_first_layer(model: UniverSeg, plain_state: dict[str, torch.Tensor]) -> UniverSeg:
    """Load a one-channel UniverSeg state dict of the same width into ``model``.

    The first CrossOp's weight is ``(C, C_target + 2, k, k)``; the image channel and the two
    support channels are copied and the new query channels start at zero, so the widened
    network first computes exactly what the plain one did.
    """
    state = dict(plain_state)
    key = "enc_blocks.0.cross.cross_conv.weight"
    w = state[key]
    extra = len(CHANNELS) - 1
    zeros = torch.zeros(w.shape[0], extra, *w.shape[2:], dtype=w.dtype)
    state[key] = torch.cat([w[:, :1], zeros, w[:, 1:]], dim=1)
    model.load_state_dict(state, strict=True)
    return model
