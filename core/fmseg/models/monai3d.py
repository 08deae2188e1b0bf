"""3D backbones for user-supplied foundation checkpoints: MONAI SwinUNETR and a Genesis-type UNet3D.

Both keep the parameter names of the checkpoints people publish, so that
:func:`fmseg.adapters.remap.load_volumetric_checkpoint` only has to strip prefixes:

* :class:`SwinUNETR3D` holds the children of MONAI's ``SwinUNETR`` under their MONAI names
  (``swinViT.*``, ``encoder1.*`` ... ``decoder1.*``, ``out.*``): the layout of the SuPreM,
  CLIP-Driven Universal Model, FSEFT and MONAI BTCV checkpoints (feature size 48, 96^3 patches).
* :class:`UNet3D` follows the U-Net of Models Genesis (Zhou et al. 2019) that SuPreM and the
  CLIP-Driven Universal Model ship as their ``unet`` backbone (``down_tr64.ops.0.conv1.weight``
  ... ``out_tr.final_conv.weight``); written from that architecture, not copied.

Every backbone exposes ``features(x) -> (B, C, D, H, W)`` (the last decoder features, input of
the output convolution), ``forward(x) -> (B, K, D, H, W)`` logits, ``feature_channels``, the
output convolution as ``head_conv`` and its encoder / decoder children by name, so adapter code
can freeze or select them. MONAI is an optional extra (``pip install fmseg[volumetric]``) and is
imported only when a SwinUNETR is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SWIN_PATCH = (96, 96, 96)


def _require_monai():
    try:
        from monai.networks.nets import SwinUNETR
    except ImportError as err:  # monai, or einops which its SwinUNETR needs
        raise ImportError(
            f"SwinUNETR needs MONAI and einops ({err}): pip install 'fmseg[volumetric]' "
            "(or pip install monai einops)"
        ) from err
    return SwinUNETR


class Backbone3D(nn.Module):
    """Names the parts of a 3D encoder-decoder; subclasses set the three class attributes.

    Attributes:
        encoder_names: Children forming the encoder (pretrained representation).
        decoder_names: Children forming the decoder (up to, not including, the head).
        head_name: Child holding the output convolution.
        patch_size: Training patch of the published checkpoints, ``(D, H, W)``.
        divisor: Input sides must be multiples of this.
    """

    encoder_names: tuple[str, ...] = ()
    decoder_names: tuple[str, ...] = ()
    head_name: str = ""
    patch_size: tuple[int, int, int] = SWIN_PATCH
    divisor: int = 1

    def encoder_modules(self) -> dict[str, nn.Module]:
        """Encoder children by name (freeze these for black-box or PEFT adaptation)."""
        return {n: getattr(self, n) for n in self.encoder_names}

    def decoder_modules(self) -> dict[str, nn.Module]:
        """Decoder children by name, head excluded."""
        return {n: getattr(self, n) for n in self.decoder_names}

    @property
    def head_conv(self) -> nn.Conv3d:
        """The 1x1x1 output convolution (features -> logits)."""
        convs = [m for m in getattr(self, self.head_name).modules() if isinstance(m, nn.Conv3d)]
        return convs[-1]

    @property
    def feature_channels(self) -> int:
        """Channels of :meth:`features`."""
        return self.head_conv.in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W)`` -> ``(B, feature_channels, D, H, W)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W)`` -> ``(B, K, D, H, W)`` logits."""
        return self.head_conv(self.features(x))


class SwinUNETR3D(Backbone3D):
    """MONAI SwinUNETR with its children (and so its checkpoint keys) under their MONAI names.

    Args:
        net: A ``monai.networks.nets.SwinUNETR``; its children are adopted, not wrapped.
    """

    encoder_names = ("swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10")
    decoder_names = ("decoder5", "decoder4", "decoder3", "decoder2", "decoder1")
    head_name = "out"
    patch_size = SWIN_PATCH
    divisor = 32

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.normalize = bool(net.normalize)
        for name, child in net.named_children():
            self.add_module(name, child)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)``, sides divisible by 32 -> ``(B, feature_size, D, H, W)``."""
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"SwinUNETR input sides must be multiples of 32, got {x.shape[2:]}")
        hidden = self.swinViT(x, self.normalize)
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec = self.decoder5(self.encoder10(hidden[4]), hidden[3])
        dec = self.decoder4(dec, enc3)
        dec = self.decoder3(dec, enc2)
        dec = self.decoder2(dec, enc1)
        return self.decoder1(dec, enc0)


def build_swinunetr(tiny: bool = False, out_channels: int = 1, in_channels: int = 1) -> SwinUNETR3D:
    """SwinUNETR as published by SuPreM / CLIP-Driven / FSEFT / MONAI (feature size 48, 62 M).

    MONAI >= 1.5 no longer takes ``img_size``: any input with sides divisible by 32 works; the
    checkpoints were trained on 96^3 patches (:data:`SWIN_PATCH`).

    Args:
        tiny: Feature size 12 (4.1 M parameters) for fast tests; needs inputs of at least
            64 voxels along one side (the 1/32 bottleneck must hold more than one voxel).
        out_channels: Logit channels of the head (1: one binary structure).
        in_channels: Image channels (1 for CT / MRI).
    """
    swin_unetr = _require_monai()
    net = swin_unetr(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=12 if tiny else 48,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        dropout_path_rate=0.0,
        use_checkpoint=False,
    )
    return SwinUNETR3D(net)


class BatchStatNorm3d(nn.BatchNorm3d):
    """Batch norm that always normalises with the statistics of its input, as Models Genesis does.

    The Genesis / SuPreM U-Net was trained and is run with ``ContBatchNorm3d``, which ignores the
    running averages even in eval mode; reproducing that keeps the released weights faithful.
    The running buffers stay only so the checkpoints load, and are never updated.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> same, normalised per channel over the batch and space."""
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class LUConv(nn.Module):
    """3x3x3 convolution, batch-statistics norm, ReLU (``conv1`` / ``bn1`` as in Genesis)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, kernel_size=3, padding=1)
        self.bn1 = BatchStatNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, cin, D, H, W)`` -> ``(B, cout, D, H, W)``."""
        return F.relu(self.bn1(self.conv1(x)))


class Down(nn.Module):
    """Two LUConvs (``ops``); returns the features and their 2x max-pool unless at the bottom."""

    def __init__(self, cin: int, mid: int, cout: int, pool: bool) -> None:
        super().__init__()
        self.ops = nn.Sequential(LUConv(cin, mid), LUConv(mid, cout))
        self.pool = pool

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, cin, D, H, W)`` -> pooled ``(B, cout, D/2, H/2, W/2)`` (or not), skip."""
        skip = self.ops(x)
        return (F.max_pool3d(skip, 2) if self.pool else skip), skip


class Up(nn.Module):
    """2x transposed convolution (``up_conv``), concatenation with the skip, two LUConvs."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(cin, cin, kernel_size=2, stride=2)
        self.ops = nn.Sequential(LUConv(cin + skip, cout), LUConv(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``(B, cin, d, h, w)``, skip ``(B, skip, 2d, 2h, 2w)`` -> ``(B, cout, 2d, 2h, 2w)``."""
        return self.ops(torch.cat((self.up_conv(x), skip), dim=1))


class OutTransition(nn.Module):
    """1x1x1 output convolution (``final_conv``); raw logits, no sigmoid."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.final_conv = nn.Conv3d(cin, cout, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, cin, D, H, W)`` -> ``(B, cout, D, H, W)``."""
        return self.final_conv(x)


class UNet3D(Backbone3D):
    """Models Genesis U-Net, as in SuPreM's and the CLIP-Driven Universal Model's ``unet``.

    Args:
        base: Width unit (32 in the published model: 64-128-256-512 channels, 19 M parameters).
        in_channels: Image channels.
        out_channels: Logit channels.
    """

    encoder_names = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
    decoder_names = ("up_tr256", "up_tr128", "up_tr64")
    head_name = "out_tr"
    patch_size = SWIN_PATCH
    divisor = 8

    def __init__(self, base: int = 32, in_channels: int = 1, out_channels: int = 1) -> None:
        super().__init__()
        b = base
        self.down_tr64 = Down(in_channels, b, 2 * b, pool=True)
        self.down_tr128 = Down(2 * b, 2 * b, 4 * b, pool=True)
        self.down_tr256 = Down(4 * b, 4 * b, 8 * b, pool=True)
        self.down_tr512 = Down(8 * b, 8 * b, 16 * b, pool=False)
        self.up_tr256 = Up(16 * b, 8 * b, 8 * b)
        self.up_tr128 = Up(8 * b, 4 * b, 4 * b)
        self.up_tr64 = Up(4 * b, 2 * b, 2 * b)
        self.out_tr = OutTransition(2 * b, out_channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)``, sides divisible by 8 -> ``(B, 2 base, D, H, W)``."""
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"UNet3D input sides must be multiples of 8, got {x.shape[2:]}")
        x, skip64 = self.down_tr64(x)
        x, skip128 = self.down_tr128(x)
        x, skip256 = self.down_tr256(x)
        x, _ = self.down_tr512(x)
        x = self.up_tr256(x, skip256)
        x = self.up_tr128(x, skip128)
        return self.up_tr64(x, skip64)


def build_unet3d(tiny: bool = False, out_channels: int = 1, in_channels: int = 1) -> UNet3D:
    """The SuPreM / CLIP-Driven / Models Genesis U-Net (19 M parameters); ``tiny``: base 4."""
    return UNet3D(base=4 if tiny else 32, in_channels=in_channels, out_channels=out_channels)
