"""Vision Transformers: the standard ViT and the positional-attention ViT of Jelassi et al.

Defaults and the paper settings they reproduce:
- `vit_ti`: ViT-Ti of Park & Kim on CIFAR: width 192, depth 12, 3 heads, MLP 768, no qkv
  bias, patch 2 at 32 px (5.40M params with 100 classes, 3.34 GFLOPs); patch 16 at 224
  (ViT-Ti/16, Jelassi et al.'s ImageNet model).
- `vit_s`: ViT-S (DeiT-S layout: width 384, depth 12, 6 heads, MLP 1536), no qkv bias as
  in `vit_ti`. Jelassi et al.'s CIFAR/SVHN model is `vit_s` with model_args
  `{depth: 7, heads: 12, mlp_ratio: 1.0, patch_size: 4}` (7 layers, 12 heads, width 384,
  MLP 384, patch 4).
- `*_pos`: the same with positional attention in every layer.

Choices for the open points of positional attention (PAPERS.md A), all model_args:
- `pos_in_tokens=False`: P drives the attention only and is not added to the tokens
  (the paper's definition: values from the patches X only);
- `pos_shared=True`: one learned P (tokens x width) shared by all layers, each head with
  its own W_Q, W_K; `False` gives every layer its own P;
- `class_token=True`: the CLS token has its own row of P, so it attends and is attended
  to like any patch; `False` drops it and pools the patch tokens by their mean.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.models.base import AttentionModel
from bench.models.layers import Attention, Block, PositionalAttention, drop_path_rates, init_transformer_weights
from bench.models.registry import PAPER_JELASSI, PAPER_PARK, register_model



def default_patch_size(img_size: int) -> int:
    """Patch 2 on CIFAR-sized images (Park & Kim's ViT-Ti), 4 up to 64 px, 16 on ImageNet sizes."""
    if img_size <= 32:
        return 2
    if img_size <= 64:
        return 4
    return 16


class TokenStem(nn.Module):
    """Patch embedding, CLS token, and the absolute positional embedding when tokens get it."""

    kind = "stem"

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, class_token: bool,
                 pos_embed: bool, add_pos: bool):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not divisible by patch size {patch_size}")
        self.grid = img_size // patch_size
        self.num_prefix_tokens = int(class_token)
        self.tokens = self.grid**2 + self.num_prefix_tokens
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.tokens, dim)) if pos_embed else None
        self.add_pos = add_pos
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
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
        pos_shared: bool = True,
        class_token: bool = True,
        pool: str | None = None,
    ):
        super().__init__()
        pool = pool or ("cls" if class_token else "mean")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', not {pool!r}")
        if pool == "cls" and not class_token:
            raise ValueError("pool 'cls' needs class_token=True")
        patch_size = patch_size or default_patch_size(img_size)
        self.positional = positional
        self.pool = pool
        self.num_prefix_tokens = int(class_token)
        shared_pos = positional and pos_shared
        add_pos = (not positional) or pos_in_tokens
        self.stem = TokenStem(img_size, patch_size, in_chans, dim, class_token,
                              pos_embed=add_pos or shared_pos, add_pos=add_pos)
        own_pos = self.stem.tokens if positional and not pos_shared else None

        def attention() -> nn.Module:
            if positional:
                return PositionalAttention(dim, heads, qkv_bias=qkv_bias, tokens=own_pos)
            return Attention(dim, heads, qkv_bias=qkv_bias)

        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks_ = nn.ModuleList(Block(dim, attention(), mlp_ratio, rates[i]) for i in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(init_transformer_weights)

    def _pos(self) -> torch.Tensor | None:
        if self.positional and self.stem.pos_embed is not None:
            return self.stem.pos_embed[0]
        return None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        pos = self._pos()
        for block in self.blocks_:
            x = block(x, pos)
        return self.norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features[:, 0] if self.pool == "cls" else features[:, self.num_prefix_tokens :].mean(dim=1)
        return self.head(pooled)

    def blocks(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for i, block in enumerate(self.blocks_):
            named += block.units(f"blocks.{i}")
        return named

    def attention_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Positional attention: P and every W_Q, W_K (the learned maps, Jelassi et al.'s A);
        values and projections stay trainable, as v does in the theory model."""
        if not self.positional:
            return super().attention_parameters()
        return [(n, p) for n, p in self.named_parameters()
                if n == "stem.pos_embed" or ".attn.qk." in n or n.endswith(".attn.pos")]

    def positional_scores(self) -> torch.Tensor:
        """(tokens, tokens) cosine similarities of the positional encodings (Jelassi et al.'s P^T P maps)."""
        pos = self.stem.pos_embed[0] if self.stem.pos_embed is not None else self.blocks_[0].msa.attn.pos
        pos = nn.functional.normalize(pos.detach(), dim=-1)
        return pos @ pos.T


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
    class_token: bool = True,
    pool: str | None = None,
) -> VisionTransformer:
    """ViT-Ti: width 192, depth 12, 3 heads, no qkv bias; patch 2 at 32 px (5.40M params, 100 classes)."""
    return VisionTransformer(num_classes, img_size, in_chans, patch_size, dim, depth, heads, mlp_ratio,
                             qkv_bias, drop_path_rate, class_token=class_token, pool=pool)


@register_model(family="vit", paper=PAPER_JELASSI)
def vit_s(
    num_classes: int,
    img_size: int = 32,
    in_chans: int = 3,
    patch_size: int | None = None,
    depth: int = 12,
    heads: int = 6,
    dim: int = 384,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = False,
    drop_path_rate: float = 0.0,
    class_token: bool = True,
    pool: str | None = None,
) -> VisionTransformer:
    """ViT-S: width 384, depth 12, 6 heads; Jelassi et al.'s CIFAR ViT is depth 7, heads 12, mlp_ratio 1, patch 4."""
    return VisionTransformer(num_classes, img_size, in_chans, patch_size, dim, depth, heads, mlp_ratio,
                             qkv_bias, drop_path_rate, class_token=class_token, pool=pool)


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
    class_token: bool = True,
    pool: str | None = None,
    pos_in_tokens: bool = False,
    pos_shared: bool = True,
) -> VisionTransformer:
    """ViT-Ti with positional attention in every layer (attention maps independent of the input)."""
    return VisionTransformer(num_classes, img_size, in_chans, patch_size, dim, depth, heads, mlp_ratio,
                             qkv_bias, drop_path_rate, positional=True, pos_in_tokens=pos_in_tokens,
                             pos_shared=pos_shared, class_token=class_token, pool=pool)


@register_model(family="vit_pos", paper=PAPER_JELASSI)
def vit_s_pos(
    num_classes: int,
    img_size: int = 32,
    in_chans: int = 3,
    patch_size: int | None = None,
    depth: int = 12,
    heads: int = 6,
    dim: int = 384,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = False,
    drop_path_rate: float = 0.0,
    class_token: bool = True,
    pool: str | None = None,
    pos_in_tokens: bool = False,
    pos_shared: bool = True,
) -> VisionTransformer:
    """ViT-S with positional attention; Jelassi et al.'s CIFAR model: depth 7, heads 12, mlp_ratio 1, patch 4."""
    return VisionTransformer(num_classes, img_size, in_chans, patch_size, dim, depth, heads, mlp_ratio,
                             qkv_bias, drop_path_rate, positional=True, pos_in_tokens=pos_in_tokens,
                             pos_shared=pos_shared, class_token=class_token, pool=pool)
