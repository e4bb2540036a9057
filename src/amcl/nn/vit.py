"""Vision Transformer encoders (ViT-Tiny, -Small, -Base) mapping images [B, C, H, W] to [B, dim].

Written here rather than taken from timm: a convolutional patch embedding, learned position
embeddings (plus a class token with ``pooling="cls"``), pre-norm Transformer blocks whose attention
is one fused qkv projection followed by :func:`torch.nn.functional.scaled_dot_product_attention`
(flash / memory-efficient kernels where available), and a final LayerNorm on the pooled token.

The patch size follows the image size (:func:`default_patch_size`): 4 px for images up to 64 px
(CIFAR: 8x8 = 64 tokens), 16 px from 128 px on (224 px: 14x14 = 196 tokens), 8 px in between.
Inputs of another size than the one the model was built for are accepted: the position
embeddings are resized (bicubic) to the input's patch grid.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VIT_SIZES", "Attention", "Block", "VisionTransformer", "default_patch_size"]

#: (width, depth, heads) of the standard sizes.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}


def default_patch_size(image_size: int) -> int:
    """4 for images up to 64 px, 16 from 128 px on, 8 in between."""
    if image_size <= 64:
        return 4
    if image_size >= 128:
        return 16
    return 8


@torch.no_grad()
def _trunc_normal_(tensor: Tensor, std: float = 0.02) -> Tensor:
    """Fill ``tensor`` from N(0, std^2) truncated to +-2 std, by redrawing the values outside (about 5 %
    per round); much faster on CPU than ``nn.init.trunc_normal_`` (inverse-CDF sampling), whose default
    bounds are moreover +-2 in absolute terms, i.e. no truncation at std 0.02."""
    tensor.normal_(0.0, std)
    if tensor.is_meta:
        return tensor
    flat = tensor.view(-1)  # parameters are contiguous
    redraw = torch.nonzero(flat.abs() > 2 * std).squeeze(1)
    while redraw.numel():
        values = torch.randn(redraw.numel(), dtype=tensor.dtype, device=tensor.device) * std
        inside = values.abs() <= 2 * std
        flat[redraw[inside]] = values[inside]
        redraw = redraw[~inside]
    return tensor


class Attention(nn.Module):
    """Multi-head self-attention: one fused qkv Linear, all heads in one SDPA call, output Linear."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by the {heads} attention heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        # [B, N, 3D] -> [3, B, heads, N, D/heads]
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_head)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT feature extractor (no classifier head); ``out_dim`` = ``dim``.

    ``pooling="cls"`` prepends a learned class token and returns its final state; ``"mean"``
    averages the patch tokens. Either way the pooled vector goes through the final LayerNorm
    (the same as normalising every token first, LayerNorm being per token).
    ``patch_size=None`` picks :func:`default_patch_size` of ``image_size``.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int | None = None,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        in_channels: int = 3,
        pooling: Literal["cls", "mean"] = "cls",
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}; choose 'cls' or 'mean'")
        patch_size = default_patch_size(image_size) if patch_size is None else patch_size
        if image_size < 1 or patch_size < 1 or image_size % patch_size:
            raise ValueError(
                f"a ViT needs an image size that is a multiple of its patch size: {image_size} px is not a "
                f"multiple of {patch_size} px; use an image size divisible by {patch_size}"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.pooling = pooling
        self.grid = image_size // patch_size
        self.out_dim: int = dim
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "cls" else None
        extra = 1 if pooling == "cls" else 0
        self.pos_embed = nn.Parameter(torch.zeros(1, extra + self.grid**2, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _trunc_normal_(self.pos_embed)
        if self.cls_token is not None:
            _trunc_normal_(self.cls_token)
        # the patch embedding is a linear map of each flattened patch: initialise it like one (as MAE)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.out_dim, -1))
        if self.patch_embed.bias is not None:
            nn.init.zeros_(self.patch_embed.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def position_embedding(self, rows: int, cols: int) -> Tensor:
        """Position embeddings of the patch tokens for a ``rows`` x ``cols`` grid, [1, rows * cols, dim]
        (bicubically resized from the built grid when it differs)."""
        extra = 1 if self.cls_token is not None else 0
        pos = self.pos_embed[:, extra:]
        if (rows, cols) == (self.grid, self.grid):
            return pos
        grid = pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(rows, cols), mode="bicubic", align_corners=False).to(pos.dtype)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"ViT input of {height}x{width} px is not a multiple of the patch size {self.patch_size} px"
            )
        x = self.patch_embed(x)  # [B, dim, rows, cols]
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self.position_embedding(rows, cols)  # [B, rows * cols, dim]
        if self.cls_token is not None:
            cls = self.cls_token + self.pos_embed[:, :1]
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return self.norm(pooled)

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, patch_size={self.patch_size}, tokens={self.grid**2}, "
                f"pooling={self.pooling!r}")

