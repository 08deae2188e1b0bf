"""Inference acceleration: fused TinyViT for PyTorch and a cached ONNX Runtime encoder.

Two independent tools, both numerically equivalent to the plain model up to fp32 rounding:

* :func:`fuse_for_inference` returns a fused **copy** of a TinyViT encoder (or of a whole
  :class:`~fmseg.models.sam.SamModel`): every ``ConvBN`` becomes one biased ``Conv2d``, each
  attention-bias table is gathered once, the attention scale is folded into the query weights,
  and ``norm + qkv`` runs on the real tokens only (padding tokens get their constant ``qkv``
  value, which is what ``qkv(norm(0))`` gives in the original). Stage 0 runs channels-last.
* :func:`onnx_encoder` exports the fused encoder once to ONNX (dynamic batch), caches it in
  ``cache_dir() / "onnx"`` under a key derived from the weights, and wraps an ONNX Runtime
  session as :class:`OrtEncoder`, a drop-in ``(B, 3, S, S) -> (B, C, h, w)`` callable.

:func:`build_encoder` picks one of them for a device and a backend name.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .models.layers import LayerNorm2d
from .models.prompt_encoder import PromptEncoder
from .models.tiny_vit import ConvBN, PatchEmbed, TinyViT, TinyViTBlock
from .weights import cache_dir

# Bump whenever the fused graph changes, so that exports made by older code are not reused.
ACCEL_VERSION = "1"
ONNX_OPSET = 17
BACKENDS = ("auto", "torch", "onnx")
# "auto" exports only encoders this large: smaller (test-sized) ones gain nothing from ONNX
# Runtime and would pay for an export.
AUTO_ONNX_MIN_SIZE = 256


# -- fusion ---------------------------------------------------------------------------------
@torch.no_grad()
def fuse_conv_bn(cb: ConvBN) -> nn.Conv2d:
    """Fold an eval-mode ``ConvBN`` into one ``Conv2d`` with bias (same geometry)."""
    c, bn = cb.c, cb.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv = nn.Conv2d(
        c.in_channels,
        c.out_channels,
        c.kernel_size,
        c.stride,
        c.padding,
        c.dilation,
        c.groups,
        bias=True,
        device=c.weight.device,
    )
    conv.weight.copy_(c.weight * scale[:, None, None, None])
    conv.bias.copy_(bn.bias - bn.running_mean * scale)
    return conv


class ChannelsLast(nn.Module):
    """Identity that switches a ``(B, C, H, W)`` tensor to channels-last memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same values, NHWC strides."""
        return x.contiguous(memory_format=torch.channels_last)


class FusedTinyViTBlock(nn.Module):
    """Inference form of :class:`~fmseg.models.tiny_vit.TinyViTBlock` (same results).

    Differences from the original, all exact up to rounding: ``norm + qkv`` is applied before
    window padding (padding tokens get the constant ``qkv(norm(0))``), the output projection
    after cropping, the gathered bias table is a buffer, and the ``1/sqrt(d)`` scale lives in
    the query weights.

    Args:
        blk: A trained block (left unchanged; parameters are copied).
    """

    def __init__(self, blk: TinyViTBlock) -> None:
        super().__init__()
        attn = blk.attn
        self.res, self.ws = blk.resolution, blk.window
        self.heads, self.hd = attn.num_heads, attn.head_dim
        self.pad = (-self.res) % self.ws
        self.nwin = (self.res + self.pad) // self.ws
        self.norm = copy.deepcopy(attn.norm)
        self.qkv = copy.deepcopy(attn.qkv)
        with torch.no_grad():
            # Rows are packed (head, q/k/v, d): scale the q rows of every head.
            w = self.qkv.weight.view(self.heads, 3, self.hd, -1)
            b = self.qkv.bias.view(self.heads, 3, self.hd)
            w[:, 0] *= attn.scale
            b[:, 0] *= attn.scale
            dim = self.qkv.in_features
            pad_value = self.qkv(self.norm(torch.zeros(1, 1, dim, device=w.device)))
        self.proj = copy.deepcopy(attn.proj)
        self.register_buffer("bias", attn.attention_biases[:, attn.bias_idxs].detach().clone())
        self.register_buffer("pad_value", pad_value.view(1, 1, 1, -1))
        self.local_conv = fuse_conv_bn(blk.local_conv)
        self.mlp = copy.deepcopy(blk.mlp)

    def _pad(self, grid: torch.Tensor) -> torch.Tensor:
        """``(B, r, r, 3C)`` -> ``(B, r+p, r+p, 3C)`` filled with the padding tokens' qkv."""
        b, r, p = grid.shape[0], self.res, self.pad
        c3 = grid.shape[-1]
        col = self.pad_value.expand(b, r, p, c3)
        grid = torch.cat([grid, col], dim=2)
        row = self.pad_value.expand(b, p, r + p, c3)
        return torch.cat([grid, row], dim=1)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Windowed attention before the output projection: ``(B, L, C) -> (B, L, C)``."""
        r, ws, n, nh, hd = self.res, self.ws, self.nwin, self.heads, self.hd
        grid = self.qkv(self.norm(x)).view(-1, r, r, 3 * nh * hd)
        if self.pad:
            grid = self._pad(grid)
        t = grid.view(-1, n, ws, n, ws, nh, 3, hd).permute(6, 0, 1, 3, 5, 2, 4, 7)
        q, k, v = t.reshape(3, -1, nh, ws * ws, hd).unbind(0)
        attn = (q @ k.transpose(-2, -1) + self.bias).softmax(dim=-1)
        out = attn @ v  # (B * n * n, heads, ws * ws, hd)
        out = out.view(-1, n, n, nh, ws, ws, hd).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(-1, n * ws, n * ws, nh * hd)
        if self.pad:
            out = out[:, :r, :r]
        return out.reshape(-1, r * r, nh * hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, C) -> (B, L, C)`` with ``L = resolution**2``."""
        r = self.res
        x = x + self.proj(self.attention(x))
        grid = x.view(-1, r, r, x.shape[-1]).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        x = self.local_conv(grid).permute(0, 2, 3, 1).reshape(-1, r * r, x.shape[-1])
        return x + self.mlp(x)


class FastLayerNorm2d(LayerNorm2d):
    """:class:`~fmseg.models.layers.LayerNorm2d` through the fused ``F.layer_norm`` kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, C, H, W)`` over ``C`` (the result is NHWC in memory)."""
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class CachedPEPromptEncoder(PromptEncoder):
    """:class:`~fmseg.models.prompt_encoder.PromptEncoder` whose dense PE is computed once."""

    dense_pe: torch.Tensor

    def get_dense_pe(self) -> torch.Tensor:
        """The cached ``(1, C, h, w)`` positional encoding of the embedding grid."""
        return self.dense_pe


def _fuse_children(module: nn.Module, skip: nn.Module | None) -> None:
    for name, child in module.named_children():
        if child is skip:
            continue
        if isinstance(child, ConvBN):
            setattr(module, name, fuse_conv_bn(child))
        elif isinstance(child, TinyViTBlock):
            setattr(module, name, FusedTinyViTBlock(child))
        elif type(child) is LayerNorm2d:
            child.__class__ = FastLayerNorm2d
        elif type(child) is PromptEncoder:
            child.register_buffer("dense_pe", child.get_dense_pe(), persistent=False)
            child.__class__ = CachedPEPromptEncoder
        else:
            _fuse_children(child, skip)


def _modules_except(root: nn.Module, skip: nn.Module | None) -> list[nn.Module]:
    """``root.modules()`` without the subtree of ``skip``."""
    out, todo = [], [root]
    while todo:
        m = todo.pop()
        if m is not skip:
            out.append(m)
            todo.extend(m.children())
    return out


def is_fusable(module: nn.Module) -> bool:
    """True for a TinyViT encoder or a model whose ``image_encoder`` is one."""
    return isinstance(getattr(module, "image_encoder", module), TinyViT)


@torch.no_grad()
def fuse_for_inference(
    model: nn.Module, channels_last: bool = True, fuse_encoder: bool | None = None
) -> nn.Module:
    """A fused, eval-mode, gradient-free **copy** of ``model``; the original is untouched.

    Works on a :class:`~fmseg.models.tiny_vit.TinyViT` or on a model holding parts to fuse
    (e.g. a ``SamModel``: its prompt encoder caches the dense positional encoding, its
    ``LayerNorm2d`` layers use the fused kernel). The copy is a snapshot for inference only:
    it has no batch-norm layers and buffers derived from the weights, so fuse again after the
    weights change (e.g. never fuse a model that is being trained and keep training the copy).

    Args:
        model: The model; it may be in training mode (its copy is put in eval mode).
        channels_last: Run the full-resolution convolutional stage in NHWC memory (faster with
            oneDNN on CPU).
        fuse_encoder: Copy and fuse ``model.image_encoder`` too; if False, the copy **shares**
            the original encoder object (not copied, not modified). Default: fuse TinyViT
            encoders, share any other (e.g. a 90M-parameter ViT-B is not duplicated).

    Returns:
        The fused copy, on the same device.
    """
    enc = getattr(model, "image_encoder", None)
    if fuse_encoder is None:
        fuse_encoder = isinstance(enc, TinyViT)
    shared = enc if isinstance(enc, nn.Module) and not fuse_encoder else None
    memo = {id(shared): shared} if shared is not None else {}
    fused = copy.deepcopy(model, memo)
    _fuse_children(fused, shared)
    for m in _modules_except(fused, shared):
        m.training = False
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
        if channels_last and isinstance(m, PatchEmbed) and not isinstance(m.seq[0], ChannelsLast):
            m.seq.insert(0, ChannelsLast())
    return fused


# -- ONNX Runtime ---------------------------------------------------------------------------
def weights_key(model: nn.Module) -> str:
    """Hex key of a model's state (names, dtypes, shapes, bytes) and of this export code."""
    digest = hashlib.sha256(f"fmseg-accel-{ACCEL_VERSION}-opset{ONNX_OPSET}".encode())
    digest.update(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def onnx_path(encoder: nn.Module) -> Path:
    """Where the export of ``encoder`` (unfused, as loaded) is cached."""
    return cache_dir() / "onnx" / f"{type(encoder).__name__.lower()}-{weights_key(encoder)}.onnx"


def _input_size(encoder: nn.Module) -> int:
    size = getattr(encoder, "img_size", None)
    if not isinstance(size, int):
        raise ValueError(f"{type(encoder).__name__} has no integer img_size to export with")
    return size


def export_onnx(encoder: nn.Module, path: str | os.PathLike | None = None) -> Path:
    """Export the fused form of ``encoder`` to ONNX once; later calls reuse the file.

    The file is written to a temporary name in the target folder and renamed into place, so a
    crash or a concurrent export never leaves a truncated model under the final name.

    Args:
        encoder: ``(B, 3, S, S) -> (B, C, h, w)`` image encoder (TinyViT is fused first).
        path: Target file; default :func:`onnx_path`.

    Returns:
        Path of the ONNX file (input ``image``, output ``embedding``, dynamic batch axis).
    """
    target = Path(path) if path is not None else onnx_path(encoder)
    if target.is_file():
        return target
    size = _input_size(encoder)
    net = fuse_for_inference(encoder, channels_last=False) if is_fusable(encoder) else encoder
    net = copy.deepcopy(net).to("cpu").eval() if net is encoder else net.to("cpu")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".part")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.rand(1, 3, size, size),),
                tmp,
                input_names=["image"],
                output_names=["embedding"],
                dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class OrtEncoder:
    """ONNX Runtime image encoder: ``(B, 3, S, S)`` float tensor -> ``(B, C, h, w)`` tensor.

    Args:
        path: ONNX file from :func:`export_onnx`.
        threads: Intra-op threads; default ``torch.get_num_threads()``.
        spin: Let idle worker threads busy-wait. Off by default: on a busy machine (a GUI,
            training or other jobs on the same cores) spinning threads slowed a LiteMedSAM
            embedding by ~20% (docs/performance.md).
    """

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, spin: bool = False
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(
            os.fspath(path), opts, providers=["CPUExecutionProvider"]
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, 3, S, S)`` images (any device; the result is on CPU)."""
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(["embedding"], {"image": x})
        return torch.from_numpy(out)


def onnx_encoder(encoder: nn.Module, threads: int | None = None) -> OrtEncoder | None:
    """Cached-export ONNX Runtime encoder, or None when onnxruntime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    return OrtEncoder(export_onnx(encoder), threads)


def build_encoder(encoder: nn.Module, backend: str = "auto", device=None):
    """The fastest available inference callable for ``encoder``.

    Args:
        encoder: The model's image encoder (left untouched).
        backend: ``"torch"`` (fused copy for TinyViT, else the encoder itself), ``"onnx"``
            (ONNX Runtime on CPU), or ``"auto"`` (ONNX Runtime for a full-size TinyViT, i.e.
            LiteMedSAM, on CPU when onnxruntime is installed, else torch). ``"onnx"`` on
            CUDA or without onnxruntime falls back to torch with a warning.
        device: Device of the encoder's inputs; default the encoder's own.

    Returns:
        ``(B, 3, S, S) -> (B, C, h, w)`` callable; :class:`OrtEncoder` results are on CPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"encoder backend must be one of {BACKENDS}, got '{backend}'")
    if device is None:
        device = next(encoder.parameters()).device
    cpu = torch.device(device).type == "cpu"
    auto_onnx = is_fusable(encoder) and getattr(encoder, "img_size", 0) >= AUTO_ONNX_MIN_SIZE
    want_onnx = backend == "onnx" or (backend == "auto" and auto_onnx)
    if want_onnx and cpu:
        try:
            ort_enc = onnx_encoder(encoder)
        except Exception as err:  # export or session failure: torch still works
            warnings.warn(f"ONNX encoder unavailable ({err}); using PyTorch", stacklevel=2)
            ort_enc = None
        if ort_enc is not None:
            return ort_enc
        if backend == "onnx":
            warnings.warn("onnxruntime is not installed; using PyTorch", stacklevel=2)
    elif backend == "onnx":
        warnings.warn("the ONNX encoder runs on CPU only; using PyTorch on CUDA", stacklevel=2)
    return fuse_for_inference(encoder) if is_fusable(encoder) else encoder
