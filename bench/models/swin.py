"""Swin Transformer (Liu et al. 2021) in timm's layout, as Park & Kim use it.

Swin-T: stage widths 96, 192, 384, 768 (`dim` doubles per stage), depths (2, 2, 6, 2),
heads (3, 6, 12, 24), MLP ratio 4, qkv bias, a per-head relative position bias table,
shifted windows (shift = window // 2) on every second block, patch merging (LayerNorm +
linear 4C -> 2C) between stages, no absolute position embedding, mean-pooled head.
Defaults by input size: Park & Kim's CIFAR setting, patch 1 and window 4 (up to 32 px;
stage 4 of a 32-px image is one 4x4 window), patch 2 / window 4 up to 64 px, the
standard patch 4 / window 7 above (Swin-T/224: 28.3M params with 1000 classes).
A stage map no larger than the window is one window and is not shifted (as in timm).

Open choice: Park & Kim's own Swin shares one bias table across heads and merges patches
with a strided conv; this follows the original (timm) Swin instead.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bench.models import windows
from bench.models.base import AttentionModel
from bench.models.layers import AttentionLayer, Block, drop_path_rates, init_transformer_weights
from bench.models.registry import PAPER_PARK, register_model



class PatchEmbed(nn.Module):
    """Non-overlapping patch projection + LayerNorm -> (B, tokens, C)."""

    kind = "stem"

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (4C), LayerNorm, linear to 2C: halves the map."""

    kind = "downsample"

    def __init__(self, dim: int, grid: int):
        super().__init__()
        if grid % 2:
            raise ValueError(f"patch merging needs an even feature map, got {grid}x{grid}")
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        g = self.grid
        x = x.view(b, g // 2, 2, g // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, (g // 2) ** 2, 4 * c)
        return self.reduction(self.norm(x))


class SwinAttention(AttentionLayer):
    """(Shifted-)window multi-head attention on (B, grid*grid, C) tokens."""

    def __init__(self, dim: int, heads: int, grid: int, window_size: int, shift: bool, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.grid = grid
        self.window = windows.effective_window(grid, window_size)
        self.shift = self.window // 2 if shift and grid > window_size else 0
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.zeros((2 * self.window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        self.register_buffer("rel_index", windows.relative_position_index(self.window, self.window), persistent=False)
        self.register_buffer("token_index", windows.token_index(grid, self.window, self.shift), persistent=False)
        mask = windows.shift_mask(grid, self.window, self.shift) if self.shift else None
        self.register_buffer("shift_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        g, p, s = self.grid, self.window, self.shift
        x = x.view(b, g, g, c)
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        tokens = windows.partition(x, p)
        bw = tokens.shape[0]
        q, k, v = self.qkv(tokens).view(bw, p * p, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.rel_bias[self.rel_index].permute(2, 0, 1)  # (heads, p*p, p*p)
        if self.shift_mask is not None:
            bias = (bias[None] + self.shift_mask[:, None]).expand(b, -1, -1, -1, -1).reshape(bw, self.heads, p * p, p * p)
        out = self.attend(q, k, v, bias, to_dense=lambda probs: windows.dense_map(probs, self.token_index, b, n))
        out = self.proj(out.transpose(1, 2).reshape(bw, p * p, c))
        x = windows.merge(out, p, g, g)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return x.reshape(b, n, c)


class SwinStage(nn.Module):
    def __init__(self, dim: int, grid: int, depth: int, heads: int, window_size: int, mlp_ratio: float,
                 qkv_bias: bool, rates: Sequence[float], downsample: bool):
        super().__init__()
        self.downsample = PatchMerging(dim // 2, grid * 2) if downsample else None
        self.blocks = nn.ModuleList(
            Block(dim, SwinAttention(dim, heads, grid, window_size, shift=j % 2 == 1, qkv_bias=qkv_bias), mlp_ratio, rates[j])
            for j in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


def default_patch_and_window(img_size: int) -> tuple[int, int]:
    if img_size <= 32:
        return 1, 4
    if img_size <= 64:
        return 2, 4
    return 4, 7


class Swin(AttentionModel):
    def __init__(self, num_classes: int, img_size: int = 32, in_chans: int = 3, patch_size: int | None = None,
                 window_size: int | None = None, dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 heads: Sequence[int] = (3, 6, 12, 24), mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0):
        super().__init__()
        depths, heads = tuple(depths), tuple(heads)
        if len(heads) != len(depths):
            raise ValueError(f"heads {heads} needs one count per stage of depths {depths}")
        default_patch, default_window = default_patch_and_window(img_size)
        patch_size = patch_size or default_patch
        window_size = window_size or default_window
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not divisible by patch size {patch_size}")
        self.stem = PatchEmbed(patch_size, in_chans, dim)
        rates = drop_path_rates(drop_path_rate, sum(depths))
        grid, width = img_size // patch_size, dim
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            if i > 0:
                grid, width = grid // 2, width * 2
            start = sum(depths[:i])
            self.stages.append(SwinStage(width, grid, depth, heads[i], window_size, mlp_ratio, qkv_bias,
                                         rates[start : start + depth], downsample=i > 0))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.apply(init_transformer_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.mean(dim=1))

    def blocks(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for i, stage in enumerate(self.stages):
            if stage.downsample is not None:
                named.append((f"stages.{i}.downsample", stage.downsample))
            for j, block in enumerate(stage.blocks):
                named += block.units(f"stages.{i}.blocks.{j}")
        return named


@register_model(family="swin", paper=PAPER_PARK)
def swin_ti(
    num_classes: int,
    img_size: int = 32,
    in_chans: int = 3,
    patch_size: int | None = None,
    window_size: int | None = None,
    dim: int = 96,
    depths: Sequence[int] = (2, 2, 6, 2),
    heads: Sequence[int] = (3, 6, 12, 24),
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_path_rate: float = 0.0,
) -> Swin:
    """Swin-T; patch 1 / window 4 at 32 px (Park & Kim's CIFAR setting), patch 4 / window 7 at 224."""
    return Swin(num_classes, img_size, in_chans, patch_size, window_size, dim, depths, heads, mlp_ratio, qkv_bias,
                drop_path_rate)
