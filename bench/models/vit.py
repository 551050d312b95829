"""Vision Transformers: the standard ViT and the positional-attention ViT of Jelassi et al.

Choices for the open points of positional attention (PAPERS.md A), all model_args:
- `pos_in_tokens=False`: P drives the attention only and is not added to the tokens
  (the paper's definition: values from the patches X only);
- one learned P (tokens x width) shared by all layers, each head with its own W_Q, W_K;
- the CLS token has its own row of P, so it attends and is attended to like any patch.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.models.base import AttentionModel
from bench.models.layers import Attention, DropPath, Mlp, PositionalAttention
from bench.models.registry import register_model

PAPER_PARK = "Park & Kim 2022"
PAPER_JELASSI = "Jelassi et al. 2022"


def default_patch_size(img_size: int) -> int:
    """Patch 2 on CIFAR-sized images (Park & Kim's ViT-Ti), 4 up to 64 px, 16 on ImageNet sizes."""
    if img_size <= 32:
        return 2
    if img_size <= 64:
        return 4
    return 16


class Block(nn.Module):
    """Pre-norm transformer block; its output is the residual stream."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float, positional: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        attn_cls = PositionalAttention if positional else Attention
        self.attn = attn_cls(dim, heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), pos))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokenStem(nn.Module):
    """Patch embedding + CLS token (+ positional embedding unless it only drives attention)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, add_pos: bool):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not divisible by patch size {patch_size}")
        self.grid = img_size // patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, dim))
        self.add_pos = add_pos
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed if self.add_pos else x


class VisionTransformer(AttentionModel):
    def __init__(
        self,
        num_classes: int,
        img_size: int = 32,
        in_chans: int = 3,
        patch_size: int | None = None,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path_rate: float = 0.0,
        positional: bool = False,
        pos_in_tokens: bool = False,
        pool: str = "cls",
    ):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', not {pool!r}")
        patch_size = patch_size or default_patch_size(img_size)
        self.positional = positional
        self.pool = pool
        self.stem = TokenStem(img_size, patch_size, in_chans, dim, add_pos=(not positional) or pos_in_tokens)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks_ = nn.ModuleList(
            Block(dim, heads, mlp_ratio, qkv_bias, rates[i], positional) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init_weights)

    def _pos(self) -> torch.Tensor | None:
        return self.stem.pos_embed[0] if self.positional else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        pos = self._pos()
        for block in self.blocks_:
            x = block(x, pos)
        return self.norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features[:, 0] if self.pool == "cls" else features[:, 1:].mean(dim=1)
        return self.head(pooled)

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [("stem", self.stem)] + [(f"blocks.{i}", b) for i, b in enumerate(self.blocks_)]

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        pos = self._pos()
        maps = []
        for block in self.blocks_:
            maps.append(block.attn.attention_map(block.norm1(x), pos))
            x = block(x, pos)
        return maps


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_model(family="vit", paper=PAPER_PARK)
def vit_ti(
    num_classes: int,
    img_size: int = 32,
    in_chans: int = 3,
    patch_size: int | None = None,
    depth: int = 12,
    heads: int = 3,
    dim: int = 192,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = False,
    drop_path_rate: float = 0.0,
    pool: str = "cls",
) -> VisionTransformer:
    """ViT-Ti: width 192, depth 12, 3 heads, no qkv bias; patch 2 at 32 px (5.40M params, 100 classes)."""
    return VisionTransformer(num_classes, img_size, in_chans, patch_size, dim, depth, heads, mlp_ratio,
                             qkv_bias, drop_path_rate, positional=False, pool=pool)


@register_model(family="vit_pos", paper=PAPER_JELASSI)
def vit_ti_pos(
    num_classes: int,
    img_size: int = 32,
    in_chans: int = 3,
    patch_size: int | None = None,
    depth: int = 12,
    heads: int = 3,
    dim: int = 192,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = False,
    drop_path_rate: float = 0.0,
    pool: str = "cls",
    pos_in_tokens: bool = False,
) -> VisionTransformer:
    """ViT-Ti with positional attention in every layer (attention maps independent of the input)."""
    return VisionTransformer(num_classes, img_size, in_chans, patch_size, dim, depth, heads, mlp_ratio,
                             qkv_bias, drop_path_rate, positional=True, pos_in_tokens=pos_in_tokens, pool=pool)
