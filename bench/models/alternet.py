"""AlterNet-50 (Park & Kim 2022): pre-activation ResNet-50 whose stage ends alternate Conv, MSA.

Checked against the authors' code (xxxnell/how-do-vits-work, models/alternet.py with
AttentionBlockB, LocalAttention and Attention2d, StemB, BNGAPBlock):
- blocks (3, 4, 6, 4) per stage; stage layout [Conv] * (n - 2m) + [Conv, MSA] * m;
  `msa_blocks` m = (0, 1, 1, 2) is the CIFAR-100 model (33.0M params with 100 classes),
  (0, 1, 3, 2) the ImageNet model (and the code's `dnn_50` default);
- MSA block, pre-activation: BN, GELU (the 1x1 shortcut conv, no BN, reads the
  pre-activated input when shapes change — never, as an MSA block always follows a conv
  block of its stage); 1x1 conv (no bias) down to in_width / 4, BN; window attention with
  q, k, v by 1x1 convs without bias (`heads` x `head_dim` = 64 wide) and a 1x1 output
  projection with bias up to the block width; drop-path; residual add;
- window attention: non-overlapping windows, no shift, one learned relative position
  bias table ((2w-1) x (2w-1), init N(0, 0.02^2)) shared by all heads;
- heads (3, 6, 12, 24) per stage; stochastic depth rising linearly over all blocks.
Window 7 (the code's default, ImageNet) does not tile 32-px maps: window 4 is the default
up to 64 px (stage 4 of a 32-px input is then a single, global window), 7 above.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bench.models import windows
from bench.models.base import AttentionModel
from bench.models.layers import AttentionLayer, DropPath
from bench.models.preact import PreActBottleneck, PreActResNet
from bench.models.registry import PAPER_PARK, register_model



class WindowAttention2d(AttentionLayer):
    """Multi-head attention within non-overlapping windows of a (B, C, H, W) map."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, head_dim: int, window_size: int, grid: int):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.grid = grid
        self.window = windows.effective_window(grid, window_size)
        inner = heads * head_dim
        self.qkv = nn.Linear(in_dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, out_dim)
        self.rel_bias = nn.Parameter(torch.randn(2 * window_size - 1, 2 * window_size - 1) * 0.02)
        self.register_buffer("rel_index", windows.relative_position_index(self.window, window_size), persistent=False)
        self.register_buffer("token_index", windows.token_index(grid, self.window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.window
        tokens = windows.partition(x.permute(0, 2, 3, 1), p)  # (B * windows, p*p, C)
        q, k, v = self.qkv(tokens).view(tokens.shape[0], p * p, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.rel_bias.flatten()[self.rel_index]  # (p*p, p*p), shared across heads
        out = self.attend(q, k, v, bias, to_dense=lambda probs: windows.dense_map(probs, self.token_index, b, h * w))
        out = self.proj(out.transpose(1, 2).reshape(tokens.shape[0], p * p, -1))
        return windows.merge(out, p, h, w).permute(0, 3, 1, 2)


class AttentionBlock(nn.Module):
    """Park & Kim's pre-activation MSA block (AttentionBlockB), in place of a bottleneck."""

    expansion = 4
    kind = "msa"

    def __init__(self, in_planes: int, planes: int, heads: int, head_dim: int, window_size: int, grid: int,
                 drop_path: float = 0.0):
        super().__init__()
        out_planes = planes * self.expansion
        width = in_planes // self.expansion
        self.norm1 = nn.BatchNorm2d(in_planes)
        self.act = nn.GELU()
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, bias=False) if in_planes != out_planes else None
        self.conv = nn.Conv2d(in_planes, width, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.attn = WindowAttention2d(width, out_planes, heads, head_dim, window_size, grid)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(self.norm1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        return skip + self.drop_path(self.attn(self.norm2(self.conv(pre))))


def msa_positions(depths: Sequence[int], msa_blocks: Sequence[int]) -> list[set[int]]:
    """Indices of the MSA blocks per stage: [Conv] * (n - 2m) + [Conv, MSA] * m."""
    if len(depths) != len(msa_blocks):
        raise ValueError(f"msa_blocks {tuple(msa_blocks)} needs one count per stage of depths {tuple(depths)}")
    positions = []
    for n, m in zip(depths, msa_blocks):
        if m < 0 or 2 * m > n:
            raise ValueError(f"a stage of {n} blocks cannot alternate {m} MSA blocks (needs 2 * m <= n)")
        positions.append({n - 2 * m + 2 * i + 1 for i in range(m)})
    return positions


class AlterNet(PreActResNet, AttentionModel):
    def __init__(self, num_classes: int, img_size: int = 32, in_chans: int = 3, stem: str = "cifar",
                 width: int = 64, depths: Sequence[int] = (3, 4, 6, 4), msa_blocks: Sequence[int] = (0, 1, 1, 2),
                 heads: Sequence[int] = (3, 6, 12, 24), head_dim: int = 64, window_size: int | None = None,
                 drop_path_rate: float = 0.0):
        depths, msa_blocks, heads = tuple(depths), tuple(msa_blocks), tuple(heads)
        if len(heads) != len(depths):
            raise ValueError(f"heads {heads} needs one count per stage of depths {depths}")
        window = window_size or (4 if img_size <= 64 else 7)
        positions = msa_positions(depths, msa_blocks)

        def make_block(stage: int, index: int, in_planes: int, planes: int, stride: int, drop_path: float,
                       grid: int) -> nn.Module:
            if index in positions[stage]:
                return AttentionBlock(in_planes, planes, heads[stage], head_dim, window, grid, drop_path)
            return PreActBottleneck(in_planes, planes, stride, drop_path)

        super().__init__(depths, num_classes, img_size, in_chans, stem, width, drop_path_rate, make_block)


@register_model(family="alternet", paper=PAPER_PARK)
def alternet50(
    num_classes: int,
    img_size: int = 32,
    in_chans: int = 3,
    stem: str = "cifar",
    width: int = 64,
    depths: Sequence[int] = (3, 4, 6, 4),
    msa_blocks: Sequence[int] = (0, 1, 1, 2),
    heads: Sequence[int] = (3, 6, 12, 24),
    head_dim: int = 64,
    window_size: int | None = None,
    drop_path_rate: float = 0.0,
) -> AlterNet:
    """AlterNet-50, CIFAR-100 layout (MSAs (0, 1, 1, 2), 33.0M params); `msa_blocks=(0, 1, 3, 2)` for ImageNet's."""
    return AlterNet(num_classes, img_size, in_chans, stem, width, depths, msa_blocks, heads, head_dim,
                    window_size, drop_path_rate)
