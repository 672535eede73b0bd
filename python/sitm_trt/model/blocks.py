"""Building blocks of the SITM network (Sec. 3.2-3.4): convolutions, CMAB, CBAM channel attention, Swin
window attention, the EAB, the GFFB and the Eq. 4-6 remap.

Precision rule (for FP16 engines): every reduction over pixels (means, maxima), LayerNorm and softmax is
computed in float32 through explicit casts, and the result is cast back to the activation dtype. In a
float32 model the casts are skipped (:func:`f32`, :func:`cast`), so the float32 graph has no extra ``Cast``
nodes; in a float16 export they become ONNX ``Cast`` nodes that a strongly typed TensorRT network keeps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvAct",
    "conv_block",
    "thumbnail",
    "spatial_mean32",
    "spatial_max32",
    "linear32",
    "ChannelAttention",
    "CMAB",
    "LayerNorm32",
    "WindowAttention",
    "SwinBlock",
    "EAB",
    "GFFB",
    "ExposureRemap",
    "remap",
    "CMAB_DILATIONS",
    "f32",
    "cast",
]

CMAB_DILATIONS = (1, 5, 9, 13)  # Eq. 2

GateFn = Callable[["ChannelAttention", torch.Tensor], torch.Tensor]
"""``gate(ca, d) -> (N, C)`` float32: supplies a CMAB's channel-attention gate (whole-frame statistics)."""


def f32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 (no op, hence no graph node, when it already is)."""
    return x if x.dtype == torch.float32 else x.float()


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` (no op, hence no graph node, when it already is)."""
    return x if x.dtype == dtype else x.to(dtype)


class ConvAct(nn.Sequential):
    """3x3 convolution ("same" padding for any dilation) followed by LeakyReLU."""

    def __init__(self, cin: int, cout: int, slope: float, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
            nn.LeakyReLU(slope),
        )


def conv_block(cin: int, cout: int, n: int, slope: float) -> nn.Sequential:
    """``n`` ConvAct layers, ``cin -> cout -> ... -> cout``."""
    return nn.Sequential(*[ConvAct(cin if i == 0 else cout, cout, slope) for i in range(n)])


def thumbnail(x: torch.Tensor, size: int) -> torch.Tensor:
    """Any ``(N, C, H, W)`` -> ``(N, C, size, size)`` (float32 inside, returned in ``x.dtype``).

    A bilinear resize to ``2 * size`` followed by a 2x2 box filter: a fixed output shape for any input size
    (so the EAB and the MEFM global branch have static shapes), each output pixel weighing 16 input taps
    (less aliasing than one bilinear downscale of a 4K frame), with only ops that ONNX/TensorRT run natively.
    The intermediate is 512x512, cheap to run backward through on small training crops.
    """
    y = F.interpolate(f32(x), size=(2 * size, 2 * size), mode="bilinear", align_corners=False)
    return cast(F.avg_pool2d(y, 2), x.dtype)


def spatial_mean32(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean over pixels in float32: ``(N, C, H, W)`` -> ``(N, C)``."""
    return f32(x).mean(dim=(2, 3))


def spatial_max32(x: torch.Tensor) -> torch.Tensor:
    """Per-channel max over pixels in float32: ``(N, C, H, W)`` -> ``(N, C)``."""
    return f32(x).amax(dim=(2, 3))


def linear32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed in float32 whatever the layer's dtype (for the small per-image vectors)."""
    bias = None if layer.bias is None else f32(layer.bias)
    return F.linear(f32(x), f32(layer.weight), bias)


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al. 2018): ``x * sigmoid(MLP(avgpool x) + MLP(maxpool x))``."""

    def __init__(self, channels: int, reduction: int, slope: float) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.slope = slope

    def mlp(self, v: torch.Tensor) -> torch.Tensor:
        return linear32(self.fc2, F.leaky_relu(linear32(self.fc1, v), self.slope))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(N, C)`` float32 channel weights in (0, 1)."""
        return self.gate_from_pools(spatial_mean32(x), spatial_max32(x))

    def gate_from_pools(self, avg: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
        """The gate from the ``(N, C)`` float32 average and max pools (whole-frame statistics)."""
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` times its gate; ``gate`` replaces ``self.gate(x)`` when given (a whole-frame gate for a tile)."""
        g = self.gate(x) if gate is None else gate
        return x * cast(g, x.dtype)[:, :, None, None]


class CMAB(nn.Module):
    """Cross-model attention block, Eq. 1-3: ``F_out = g(CA(cat(F_d1, F_d5, F_d9, F_d13))) + F_cur``.

    ``F~_q = g_q(F_q)`` (1x1, ``channels -> reduced``); ``M_q = sigmoid(1x1(cat(F~_cur, F~_ref)))`` are
    one-channel spatial attention maps; ``F_di = LeakyReLU(h_di(cat(M_cur F~_cur, M_ref F~_ref)))`` with
    3x3 convolutions of dilation 1, 5, 9, 13; CA is CBAM's channel attention; ``g`` a 1x1 back to
    ``channels``.
    """

    def __init__(self, channels: int, reduced: int, ca_reduction: int, slope: float) -> None:
        super().__init__()
        r = reduced
        self.reduce_cur = nn.Conv2d(channels, r, 1)
        self.reduce_ref = nn.Conv2d(channels, r, 1)
        self.att_cur = nn.Conv2d(2 * r, 1, 1)
        self.att_ref = nn.Conv2d(2 * r, 1, 1)
        self.dilated = nn.ModuleList(nn.Conv2d(2 * r, r, 3, padding=d, dilation=d) for d in CMAB_DILATIONS)
        self.act = nn.LeakyReLU(slope)
        self.ca = ChannelAttention(len(CMAB_DILATIONS) * r, ca_reduction, slope)
        self.out = nn.Conv2d(len(CMAB_DILATIONS) * r, channels, 1)

    def attention(self, cur: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Eq. 1 and the attention maps: ``(F~_cur, F~_ref, M_cur, M_ref)``."""
        f_cur, f_ref = self.reduce_cur(cur), self.reduce_ref(ref)
        cat = torch.cat([f_cur, f_ref], dim=1)
        return f_cur, f_ref, torch.sigmoid(self.att_cur(cat)), torch.sigmoid(self.att_ref(cat))

    def residual(self, cur: torch.Tensor, ref: torch.Tensor, gate: GateFn | None = None) -> torch.Tensor:
        """The residual branch of Eq. 3 (everything but ``+ F_cur``).

        ``gate(ca, d)`` supplies the channel-attention gate of the dilated features ``d`` (default
        ``ca.gate(d)``, pooled over this input; a tiled run passes the whole frame's).
        """
        f_cur, f_ref, m_cur, m_ref = self.attention(cur, ref)
        x = torch.cat([m_cur * f_cur, m_ref * f_ref], dim=1)
        d = torch.cat([self.act(conv(x)) for conv in self.dilated], dim=1)
        return self.out(self.ca(d, None if gate is None else gate(self.ca, d)))

    def forward(self, cur: torch.Tensor, ref: torch.Tensor, *, gate: GateFn | None = None) -> torch.Tensor:
        return cur + self.residual(cur, ref, gate)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm over the last dim, computed in float32 and returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else f32(self.weight)
        b = None if self.bias is None else f32(self.bias)
        return cast(F.layer_norm(f32(x), self.normalized_shape, w, b, self.eps), x.dtype)


def _window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """``(N, H, W, C)`` -> ``(N * H/w * W/w, w*w, C)``."""
    _, h, wd, c = x.shape
    x = x.reshape(-1, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _window_reverse(x: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of :func:`_window_partition`."""
    c = x.shape[-1]
    x = x.reshape(-1, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, wd, c)


class WindowAttention(nn.Module):
    """Swin window multi-head self-attention with a learned relative position bias (Liu et al. 2021).

    Logits, bias, shift mask and softmax are in float32; the matrix products in the activation dtype.
    """

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: ``(B, T, C)`` windows of ``T = window**2`` tokens; ``mask``: ``(nW, T, T)`` or None."""
        t, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        bias = self.rel_bias[self.rel_index.reshape(-1)].reshape(t, t, self.heads).permute(2, 0, 1)
        logits = f32(q @ k.transpose(-2, -1)) + f32(bias)[None]
        if mask is not None:
            nw = mask.shape[0]
            logits = logits.reshape(-1, nw, self.heads, t, t) + mask[None, :, None]
            logits = logits.reshape(-1, self.heads, t, t)
        attn = cast(torch.softmax(logits, dim=-1), v.dtype)
        out = (attn @ v).transpose(1, 2).reshape(-1, t, c)
        return self.proj(out)


def _shift_mask(grid: int, window: int, shift: int) -> torch.Tensor:
    """Swin's attention mask for the shifted windows of a ``grid x grid`` map: ``(nW, T, T)``, 0 or -100."""
    img = torch.zeros(1, grid, grid, 1)
    cnt = 0
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in bands:
        for ws in bands:
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = _window_partition(img, window).squeeze(-1)  # (nW, T)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class SwinBlock(nn.Module):
    """A Swin transformer block (pre-norm, GELU MLP) on a fixed ``grid x grid`` token map ``(N, grid, grid, dim)``."""

    def __init__(self, dim: int, heads: int, window: int, grid: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        if grid <= window:
            window, shift = grid, 0
        self.window, self.shift, self.grid = window, shift, grid
        self.norm1 = LayerNorm32(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = LayerNorm32(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        mask = _shift_mask(grid, window, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, w, s = self.grid, self.window, self.shift
        y = self.norm1(x)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = _window_reverse(self.attn(_window_partition(y, w), self.attn_mask), w, g, g)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class EAB(nn.Module):
    """The shared part of the exposure adaptive block (Sec. 3.4): thumbnail -> F_glo.

    Three 3x3 convolutions with strides 2, 2, 1 on the ``thumb_size``-square thumbnail, then ``depth`` Swin
    blocks (odd ones shifted) and a final LayerNorm: ``F_glo`` is ``(N, dim, thumb/4, thumb/4)``.
    """

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, thumb: int, slope: float):
        super().__init__()
        self.thumb = thumb
        self.stem = nn.Sequential(
            ConvAct(3, dim, slope, stride=2),
            ConvAct(dim, dim, slope, stride=2),
            nn.Conv2d(dim, dim, 3, padding=1),
        )
        grid = thumb // 4
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, grid, (window // 2) if i % 2 else 0, mlp_ratio) for i in range(depth)
        )
        self.norm = LayerNorm32(dim)

    def forward(self, thumb: torch.Tensor) -> torch.Tensor:
        """``thumb``: ``(N, 3, thumb, thumb)`` (see :func:`thumbnail`) -> ``F_glo``."""
        x = self.stem(thumb).permute(0, 2, 3, 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x).permute(0, 3, 1, 2)


class GFFB(nn.Module):
    """Global feature fusion block: ``F_enc + conv3x3(LReLU(conv1x1(cat(F_enc, resize(F_glo)))))``.

    ``F_glo`` is bilinearly resized to the bottleneck's size (which follows the input size).
    """

    def __init__(self, channels: int, glo_dim: int, slope: float) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(channels + glo_dim, channels, 1)
        self.act = nn.LeakyReLU(slope)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, f_enc: torch.Tensor, f_glo: torch.Tensor) -> torch.Tensor:
        g = F.interpolate(f_glo, size=f_enc.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse_map(f_enc, g)

    def fuse_map(self, f_enc: torch.Tensor, glo_map: torch.Tensor) -> torch.Tensor:
        """The block given F_glo already resized to ``f_enc``'s grid (or cropped from the whole frame's)."""
        return f_enc + self.conv(self.act(self.fuse(torch.cat([f_enc, glo_map], dim=1))))


class ExposureRemap(nn.Module):
    """Eq. 4-5: ``S_1 = f_1(cat(pool F_glo, pool F_enc))``, ``S_j = f_j(LReLU(S_{j-1}))`` (float32).

    ``widths`` are the decoder widths in decoding order (coarsest decoder level first).
    """

    def __init__(self, glo_dim: int, enc_dim: int, widths: list[int], slope: float) -> None:
        super().__init__()
        dims = [glo_dim + enc_dim, *widths]
        self.linears = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(len(widths)))
        self.slope = slope

    def forward(self, f_glo: torch.Tensor, f_enc: torch.Tensor) -> list[torch.Tensor]:
        """The codes ``[S_1, S_2, ...]``, each ``(N, C_j)`` float32."""
        v = torch.cat([spatial_mean32(f_glo), spatial_mean32(f_enc)], dim=1)
        codes = []
        for j, lin in enumerate(self.linears):
            v = linear32(lin, v if j == 0 else F.leaky_relu(v, self.slope))
            codes.append(v)
        return codes


def remap(feature: torch.Tensor, code: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6: ``F - mean_c(F) + S`` per channel; mean and ``S - mean`` in float32, one add in ``F.dtype``.

    ``mean`` (``(N, C)`` float32) replaces ``F``'s own channel means (the whole frame's, for a tile).
    """
    delta = code - (spatial_mean32(feature) if mean is None else mean)
    return feature + cast(delta, feature.dtype)[:, :, None, None]
