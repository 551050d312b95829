"""Pooling-based Vision Transformer (Heo et al. 2021), PiT-Ti in the original / timm layout.

PiT-Ti: three stages of widths 64, 128, 256 (`dim` doubles per stage), depths (2, 6, 4),
heads (2, 4, 8), MLP ratio 4, qkv bias; an overlapping conv patch embedding with a learned
absolute position embedding and a CLS token; between stages a depthwise 3x3 stride-2
conv on the spatial tokens (width doubling) and a linear map on the CLS token; LayerNorm
and the classifier on the CLS token.
Defaults by input size: Park & Kim's CIFAR setting, patch 2 with stride 1 (a 31x31 token
map at 32 px, then 16x16 and 8x8); patch 4 / stride 2 up to 64 px; the original patch 16 /
stride 8 above (PiT-Ti/224: 4.85M params with 1000 classes).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from bench.models.base import AttentionModel
from bench.models.layers import Attention, Block, drop_path_rates, init_transformer_weights
from bench.models.registry import PAPER_PARK, register_model
from bench.models.vit import default_patch_size



class ConvTokenStem(nn.Module):
    """Overlapping conv patch embedding + absolute position embedding + CLS token."""

    kind = "stem"

    def __init__(self, img_size: int, patch_size: int, stride: int, in_chans: int, dim: int):
        super().__init__()
        if patch_size > img_size:
            raise ValueError(f"patch size {patch_size} is larger than the image ({img_size} px)")
        self.grid = (img_size - patch_size) // stride + 1
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)


class TokenPooling(nn.Module):
    """PiT's pooling layer: depthwise 3x3 stride-2 conv on the spatial tokens, linear on the CLS token."""

    kind = "downsample"

    def __init__(self, in_dim: int, out_dim: int, grid: int):
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(in_dim, out_dim, 3, 2, 1, groups=in_dim)
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, tokens = x[:, :1], x[:, 1:]
        b, _, c = tokens.shape
        tokens = self.conv(tokens.transpose(1, 2).reshape(b, c, self.grid, self.grid)).flatten(2).transpose(1, 2)
        return torch.cat([self.fc(cls), tokens], dim=1)


class PiT(AttentionModel):
    num_prefix_tokens = 1

    def __init__(self, num_classes: int, img_size: int = 32, in_chans: int = 3, patch_size: int | None = None,
                 patch_stride: int | None = None, dim: int = 64, depths: Sequence[int] = (2, 6, 4),
                 heads: Sequence[int] = (2, 4, 8), mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0):
        super().__init__()
        depths, heads = tuple(depths), tuple(heads)
        if len(heads) != len(depths):
            raise ValueError(f"heads {heads} needs one count per stage of depths {depths}")
        patch_size = patch_size or default_patch_size(img_size)
        patch_stride = patch_stride or max(1, patch_size // 2)
        self.stem = ConvTokenStem(img_size, patch_size, patch_stride, in_chans, dim)
        rates = drop_path_rates(drop_path_rate, sum(depths))
        grid, width = self.stem.grid, dim
        self.pools = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            if i > 0:
                self.pools.append(TokenPooling(width, width * 2, grid))
                grid, width = math.ceil(grid / 2), width * 2
            start = sum(depths[:i])
            self.stages.append(nn.ModuleList(
                Block(width, Attention(width, heads[i], qkv_bias=qkv_bias), mlp_ratio, rates[start + j])
                for j in range(depth)
            ))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.apply(init_transformer_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.pools[i - 1](x)
            for block in stage:
                x = block(x)
        return self.norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features[:, 0])

    def blocks(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for i, stage in enumerate(self.stages):
            if i > 0:
                named.append((f"pools.{i - 1}", self.pools[i - 1]))
            for j, block in enumerate(stage):
                named += block.units(f"stages.{i}.{j}")
        return named


@register_model(family="pit", paper=PAPER_PARK)
def pit_ti(
    num_classes: int,
    img_size: int = 32,
    in_chans: int = 3,
    patch_size: int | None = None,
    patch_stride: int | None = None,
    dim: int = 64,
    depths: Sequence[int] = (2, 6, 4),
    heads: Sequence[int] = (2, 4, 8),
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_path_rate: float = 0.0,
) -> PiT:
    """PiT-Ti; patch 2 / stride 1 at 32 px (Park & Kim's CIFAR setting), patch 16 / stride 8 at 224."""
    return PiT(num_classes, img_size, in_chans, patch_size, patch_stride, dim, depths, heads, mlp_ratio, qkv_bias,
               drop_path_rate)
