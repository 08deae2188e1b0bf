"""Inference acceleration, equal to the plain models up to fp32 rounding.

* :func:`fuse_for_inference`: a fused inference **copy** of a TinyViT or of a whole SAM model
  (ConvBN folded, attention tables gathered, cached prompt-independent decoder work).
* :func:`export_onnx` / :class:`OrtEncoder`: the fused encoder exported once to ONNX, cached
  under a key of its weights, run by ONNX Runtime. :func:`build_encoder` picks a backend.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import math
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..models.layers import LayerNorm2d
from ..models.mask_decoder import Attention, MaskDecoder
from ..models.prompt_encoder import PromptEncoder
from ..models.tiny_vit import ConvBN, TinyViT, TinyViTBlock
from ..weights import cache_dir

# Bump whenever the fused graph changes, so that exports made by older code are not reused.
ACCEL_VERSION = "1"
ONNX_OPSET = 17
BACKENDS = ("auto", "torch", "onnx")
CPU_EP = "CPUExecutionProvider"
AUTO_ONNX_MIN_SIZE = 256  # "auto" leaves test-sized encoders (no gain, export cost) to torch


@torch.no_grad()
def fuse_conv_bn(cb: ConvBN) -> nn.Conv2d:
    """Fold an eval-mode ``ConvBN`` into one ``Conv2d`` with bias (same geometry)."""
    c, bn = cb.c, cb.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    geometry = (c.kernel_size, c.stride, c.padding, c.dilation, c.groups)
    conv = nn.Conv2d(c.in_channels, c.out_channels, *geometry, device=c.weight.device)
    conv.weight.copy_(c.weight * scale[:, None, None, None])
    conv.bias.copy_(bn.bias - bn.running_mean * scale)
    return conv


class FusedTinyViTBlock(nn.Module):
    """Inference copy of a :class:`~fmseg.models.tiny_vit.TinyViTBlock`, same results.

    ``norm + qkv`` runs before window padding (padding tokens get the constant
    ``qkv(norm(0))``), the output projection after cropping; the gathered bias table is a
    buffer and the ``1/sqrt(d)`` scale lives in the query weights.
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
        with torch.no_grad():  # rows are packed (head, q/k/v, d): scale every head's q rows
            self.qkv.weight.view(self.heads, 3, self.hd, -1)[:, 0] *= attn.scale
            self.qkv.bias.view(self.heads, 3, self.hd)[:, 0] *= attn.scale
            pad_value = self.qkv(self.norm(attn.qkv.weight.new_zeros(1, 1, attn.qkv.in_features)))
        self.proj = copy.deepcopy(attn.proj)
        self.register_buffer("bias", attn.attention_biases[:, attn.bias_idxs].detach().clone())
        self.register_buffer("pad_value", pad_value.view(1, 1, 1, -1))
        self.local_conv = fuse_conv_bn(blk.local_conv)
        self.mlp = copy.deepcopy(blk.mlp)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Windowed attention before the output projection: ``(B, L, C) -> (B, L, C)``."""
        r, ws, n, nh, hd = self.res, self.ws, self.nwin, self.heads, self.hd
        grid = self.qkv(self.norm(x)).view(-1, r, r, 3 * nh * hd)
        if self.pad:  # pad right and bottom with the padding tokens' qkv
            b, p, c3 = grid.shape[0], self.pad, grid.shape[-1]
            grid = torch.cat([grid, self.pad_value.expand(b, r, p, c3)], dim=2)
            grid = torch.cat([grid, self.pad_value.expand(b, p, r + p, c3)], dim=1)
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

    def get_dense_pe(self) -> torch.Tensor:
        """The cached ``(1, C, h, w)`` positional encoding of the embedding grid."""
        return self.dense_pe


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """``(B, N, h*d) -> (B, h, N, d)``."""
    return x.unflatten(-1, (h, -1)).transpose(1, 2)


def _tokens_to_image(attn: Attention, q_in, xk, xv, kv=None) -> torch.Tensor:
    """``attn(q_in, xk, xv)``, few queries ``(B, N, C)``, many keys ``(B, L, C)``.

    Key and value projections move to the query side (``q.(Wk x) = (Wk^T q).x``, and
    ``sum a (Wv x + b) = Wv (sum a x) + b``): the ``L`` tokens are never projected. ``kv``:
    already projected ``(keys, values)``.
    """
    h = attn.num_heads
    q = _heads(attn.q_proj(q_in), h)  # (B, h, N, d)
    d = q.shape[-1]
    q = q / math.sqrt(d)
    if kv is not None:
        a = torch.softmax(q @ _heads(kv[0], h).transpose(-2, -1), dim=-1)
        return attn.out_proj((a @ _heads(kv[1], h)).transpose(1, 2).flatten(2))
    s = (q @ attn.k_proj.weight.unflatten(0, (h, d))).flatten(1, 2) @ xk.transpose(1, 2)
    a = torch.softmax(s + (q @ attn.k_proj.bias.view(h, d, 1)).flatten(1, 2), dim=-1)
    ax = (a @ xv).unflatten(1, (h, -1))  # (B, h, N, C)
    out = ax @ attn.v_proj.weight.unflatten(0, (h, d)).transpose(1, 2)
    return attn.out_proj((out + attn.v_proj.bias.view(h, 1, d)).transpose(1, 2).flatten(2))


def _image_to_tokens(attn: Attention, xq, k_in, v_in) -> torch.Tensor:
    """``attn(xq, k_in, v_in)``, many queries ``(B, L, C)``, few keys ``(B, N, C)``.

    Query and output projections move to the key side; scores are laid out ``(B, h*N, L)`` so
    that the softmax over the few keys runs along a long contiguous axis.
    """
    h = attn.num_heads
    k, v = _heads(attn.k_proj(k_in), h), _heads(attn.v_proj(v_in), h)  # (B, h, N, d)
    k = k / math.sqrt(k.shape[-1])
    kq = (k @ attn.q_proj.weight.unflatten(0, (h, -1))).flatten(1, 2)  # (B, h*N, C)
    s = torch.baddbmm((k @ attn.q_proj.bias.view(h, -1, 1)).flatten(1, 2), kq, xq.transpose(1, 2))
    a = torch.softmax(s.unflatten(1, (h, -1)), dim=2).flatten(1, 2)  # (B, h*N, L)
    vo = (v @ attn.out_proj.weight.unflatten(1, (h, -1)).permute(1, 2, 0)).flatten(1, 2)
    return torch.baddbmm(attn.out_proj.bias, a.transpose(1, 2), vo)


def _act_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for GELU (no new 8 MB buffer per call)."""
    return torch.ops.aten.gelu_(x, approximate=act.approximate) if type(act) is nn.GELU else act(x)


class CachedMaskDecoder(MaskDecoder):
    """:class:`~fmseg.models.mask_decoder.MaskDecoder` doing less per-pixel work.

    Attention projections are re-associated onto the few prompt tokens; without a mask prompt
    the first block's image-side projections depend on the embedding only and are kept for the
    last embedding (same tensor object and checksum); the 2x2 stride-2 transposed convolutions
    run as per-pixel linear maps. Equal to the plain decoder up to fp32 rounding.
    """

    _memo: tuple | None = None
    _lin: list | None = None

    def _image_side(self, emb: torch.Tensor, pe: torch.Tensor, dense: torch.Tensor) -> tuple:
        vec, check = dense[:1, :, :1, :1], float(emb.sum())  # the sum catches in-place edits
        memo = self._memo
        if memo and memo[0] is emb and memo[1] == check and memo[2] is pe:
            if torch.equal(memo[3], vec):
                return memo[4]
        keys = (emb + dense[:1]).flatten(2).transpose(1, 2)
        key_pe = pe.flatten(2).transpose(1, 2)
        t2i, xk = self.transformer.layers[0].cross_attn_token_to_image, keys + key_pe
        out = (keys, key_pe, (t2i.k_proj(xk), t2i.v_proj(keys)), xk)
        self._memo = (emb, check, pe, vec.clone(), out)
        return out

    def _upscale(self, keys: torch.Tensor, hyper: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Upscaling and hypernetwork product, tokens ``(B, h*w, C)`` -> ``(B, M, 4h, 4w)``.

        Each transposed convolution is a linear layer to the 2x2 sub-pixels; everything runs in
        that sub-pixel layout and only the final masks are rearranged.
        """
        up1, ln, act1, up2, act2 = self.output_upscaling
        if self._lin is None:
            self._lin = [
                (c.weight.permute(2, 3, 1, 0).flatten(0, 2), c.bias.repeat(4)) for c in (up1, up2)
            ]
        (w1, b1), (w2, b2) = self._lin
        y = F.linear(keys, w1, b1).unflatten(-1, (4, -1))  # (B, hw, 4, C1)
        y = _act_(act1, F.layer_norm(y, ln.weight.shape, ln.weight, ln.bias, ln.eps))
        y = _act_(act2, F.linear(y, w2, b2))  # (B, hw, 4, 4 * C2)
        m = y.reshape(y.shape[0], -1, hyper.shape[-1]) @ hyper.transpose(1, 2)
        m = m.view(-1, h, w, 2, 2, 2, 2, hyper.shape[1]).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return m.reshape(-1, hyper.shape[1], 4 * h, 4 * w)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output: bool = False):  # fmt: skip
        """Same contract as :meth:`MaskDecoder.forward`."""
        emb, sparse, dense = image_embeddings, sparse_prompt_embeddings, dense_prompt_embeddings
        if emb.shape[0] != 1 or dense.stride(-1) or dense.stride(-2) or torch.is_grad_enabled():
            return super().forward(emb, image_pe, sparse, dense, multimask_output)
        b, tr = sparse.shape[0], self.transformer
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.expand(b, -1, -1), sparse], dim=1)
        keys, key_pe, kv, xk = self._image_side(emb, image_pe, dense)
        queries = tokens
        for i, blk in enumerate(tr.layers):
            if blk.skip_first_layer_pe:
                queries = blk.self_attn(queries, queries, queries)
            else:
                q = queries + tokens
                queries = queries + blk.self_attn(q, q, queries)
            queries = blk.norm1(queries)
            xk = xk if i == 0 else keys + key_pe
            a = _tokens_to_image(blk.cross_attn_token_to_image, queries + tokens, xk, keys, kv)
            queries = blk.norm2(queries + a)
            queries = blk.norm3(queries + blk.mlp(queries))
            q, i2t = queries + tokens, blk.cross_attn_image_to_token
            keys = blk.norm4(keys + _image_to_tokens(i2t, xk, q, queries))
            kv = None
        a = _tokens_to_image(tr.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
        hs = tr.norm_final_attn(queries + a)
        sel = range(1, self.num_mask_tokens) if multimask_output else range(1)
        hyper = torch.stack([self.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in sel], 1)
        masks = self._upscale(keys, hyper, *emb.shape[-2:])
        iou = self.iou_prediction_head(hs[:, 0])
        return masks, iou[:, 1:] if multimask_output else iou[:, :1]


def _fuse_children(module: nn.Module, skip: nn.Module | None) -> None:
    swap = {LayerNorm2d: FastLayerNorm2d, MaskDecoder: CachedMaskDecoder}
    swap[PromptEncoder] = CachedPEPromptEncoder
    for name, child in module.named_children():
        if isinstance(child, ConvBN):
            setattr(module, name, fuse_conv_bn(child))
        elif isinstance(child, TinyViTBlock):
            setattr(module, name, FusedTinyViTBlock(child))
        elif child is not skip:
            if type(child) is PromptEncoder:
                child.register_buffer("dense_pe", child.get_dense_pe(), persistent=False)
            child.__class__ = swap.get(type(child), type(child))
            _fuse_children(child, skip)


def is_fusable(module: nn.Module) -> bool:
    """True for a TinyViT encoder or a model whose ``image_encoder`` is one."""
    return isinstance(getattr(module, "image_encoder", module), TinyViT)


@torch.no_grad()
def fuse_for_inference(
    model: nn.Module, channels_last: bool = True, fuse_encoder: bool | None = None
) -> nn.Module:
    """A fused, eval-mode, gradient-free **copy** of ``model``; the original is untouched.

    For a TinyViT or a model holding one and/or a SAM prompt encoder and mask decoder. The copy
    is an inference snapshot (no batch norm, buffers derived from the weights): fuse again
    after the weights change, and never train it.

    Args:
        model: The model (it may be in training mode; the copy is in eval mode).
        channels_last: Feed TinyViT NHWC memory (its oneDNN convolutions are faster so).
        fuse_encoder: Copy and fuse ``model.image_encoder`` too; if False the copy **shares**
            the original encoder (not copied, not modified). Default: only a TinyViT is fused.
    """
    enc = getattr(model, "image_encoder", None)
    keep = not isinstance(enc, TinyViT) if fuse_encoder is None else not fuse_encoder
    shared = enc if isinstance(enc, nn.Module) and keep else None
    memo = {id(shared): shared} if shared is not None else {}
    fused = copy.deepcopy(model, memo)
    _fuse_children(fused, shared)
    skip = set() if shared is None else {id(m) for m in shared.modules()}
    for m in (m for m in fused.modules() if id(m) not in skip):
        m.training = False
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
        if channels_last and isinstance(m, TinyViT):  # NHWC input: oneDNN convs stay NHWC
            m.patch_embed.register_forward_pre_hook(_channels_last)
    return fused


def _channels_last(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


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


def export_onnx(encoder: nn.Module, path: str | os.PathLike | None = None) -> Path:
    """Export ``encoder`` (fused first if TinyViT) to ONNX once; later calls reuse the file.

    Written under a temporary name beside the target and renamed into place, so a crash or a
    concurrent export never leaves a truncated file. Input ``image``, output ``embedding``,
    dynamic batch axis; ``path`` defaults to :func:`onnx_path`.
    """
    target = Path(path) if path is not None else onnx_path(encoder)
    if target.is_file():
        return target
    size = int(encoder.img_size)  # TinyViT and ViT encoders have a fixed input size
    net = fuse_for_inference(encoder, channels_last=False) if is_fusable(encoder) else encoder
    net = copy.deepcopy(net).to("cpu").eval() if net is encoder else net.to("cpu")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".part")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = {"image": {0: "batch"}, "embedding": {0: "batch"}}
            torch.onnx.export(net, (torch.rand(1, 3, size, size),), tmp, dynamo=False,
                              input_names=["image"], output_names=["embedding"],
                              dynamic_axes=axes, opset_version=ONNX_OPSET)  # fmt: skip
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
            embedding by ~28% (docs/dev/performance.md).
    """

    def __init__(self, path: str | os.PathLike, threads: int = 0, spin: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(os.fspath(path), opts, providers=[CPU_EP])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, 3, S, S)`` images (any device; the result is on CPU)."""
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(["embedding"], {"image": x})[0])


def build_encoder(encoder: nn.Module, backend: str = "auto", device=None):
    """The fastest ``(B, 3, S, S) -> (B, C, h, w)`` callable for ``encoder`` (left untouched).

    Args:
        encoder: The model's image encoder.
        backend: ``"torch"`` (fused copy of a TinyViT, else the encoder itself), ``"onnx"``
            (:class:`OrtEncoder`, results on CPU; on CUDA or without onnxruntime: torch, with a
            warning) or ``"auto"`` (ONNX for a full-size TinyViT on CPU if available).
        device: Device of the inputs; default the encoder's.
    """
    if backend not in BACKENDS:
        raise ValueError(f"encoder backend must be one of {BACKENDS}, got '{backend}'")
    cpu = torch.device(device or next(encoder.parameters()).device).type == "cpu"
    auto_onnx = is_fusable(encoder) and getattr(encoder, "img_size", 0) >= AUTO_ONNX_MIN_SIZE
    want_onnx = backend == "onnx" or (backend == "auto" and auto_onnx)
    if want_onnx and cpu and importlib.util.find_spec("onnxruntime") is not None:
        try:
            return OrtEncoder(export_onnx(encoder))
        except Exception as err:  # export or session failure: torch still works
            warnings.warn(f"ONNX encoder unavailable ({err}); using PyTorch", stacklevel=2)
    elif backend == "onnx":
        why = "runs on CPU only" if not cpu else "needs onnxruntime"
        warnings.warn(f"the ONNX encoder {why}; using PyTorch", stacklevel=2)
    return fuse_for_inference(encoder) if is_fusable(encoder) else encoder
