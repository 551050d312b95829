"""ConViT as Park & Kim define it: a ViT whose attention is local and two-dimensional.

Not d'Ascoli et al.'s ConViT: each query attends only to the k x k neighbourhood of its
token on the patch grid (how-do-vits-work, models/convit.py: ConvAttention2d). Layout of
their `convit_ti`: width 192, depth 12, 3 heads of 64, MLP 768, no qkv bias, no CLS
token, learned absolute position embedding, classifier = mean over tokens, LayerNorm,
linear. `kernel_size` k = 3 by default (the paper compares 3, 5, 8).

Open choices:
- neighbourhood offsets -(k-1)//2 .. k//2 (centred for odd k; one more on the
  right/bottom for even k, which is what padding (k-1)/2 becomes for an even kernel);
- positions outside the map are excluded from the softmax (the reference code unfolds a
  zero-padded map, so border queries also put weight on zero keys/values);
- patch size as for ViT: 2 at 32 px, 4 up to 64 px, 16 above.
The fused path is dense SDPA with a -inf mask outside the neighbourhood; the math path
gathers the k*k neighbours, so FLOPs (counted on the math path) are the local ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.base import AttentionModel
from bench.models.layers import AttentionLayer, Block, drop_path_rates, init_transformer_weights
from bench.models.registry import PAPER_PARK, register_model
from bench.models.vit import TokenStem, default_patch_size



def neighbourhood(grid: int, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, k*k) neighbour token ids (out-of-map ones point at a dummy id = tokens) and validity."""
    offsets = torch.arange(kernel_size) - (kernel_size - 1) // 2
    rows = torch.arange(grid)[:, None, None, None] + offsets[None, None, :, None]
    cols = torch.arange(grid)[None, :, None, None] + offsets[None, None, None, :]
    rows, cols = torch.broadcast_tensors(rows, cols)
    valid = (rows >= 0) & (rows < grid) & (cols >= 0) & (cols < grid)
    ids = torch.where(valid, rows * grid + cols, torch.full_like(rows, grid * grid))
    return ids.reshape(grid * grid, -1), valid.reshape(grid * grid, -1)


class LocalAttention2d(AttentionLayer):
    """Multi-head attention of each token to its k x k neighbourhood on a (grid x grid) token map."""

    def __init__(self, dim: int, heads: int, grid: int, kernel_size: int, qkv_bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.heads = heads
        self.head_dim = dim // heads
        self.tokens = grid * grid
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        ids, valid = neighbourhood(grid, kernel_size)
        blocked = torch.zeros(valid.shape).masked_fill(~valid, float("-inf"))
        dense = torch.full((self.tokens, self.tokens + 1), float("-inf")).scatter(1, ids, blocked)[:, : self.tokens]
        self.register_buffer("neighbours", ids, persistent=False)
        self.register_buffer("local_mask", blocked, persistent=False)
        self.register_buffer("dense_mask", dense, persistent=False)

    def _to_dense(self, probs: torch.Tensor) -> torch.Tensor:
        b, h, n, _ = probs.shape
        dense = probs.new_zeros(b, h, n, n + 1)
        return dense.scatter(-1, self.neighbours.expand(b, h, -1, -1), probs)[..., :n]

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.fused and self.map_sink is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense_mask)
        else:
            pad = q.new_zeros(b, self.heads, 1, self.head_dim)
            k_local = torch.cat([k, pad], dim=2)[:, :, self.neighbours]  # (B, H, N, k*k, dh)
            v_local = torch.cat([v, pad], dim=2)[:, :, self.neighbours]
            logits = torch.einsum("bhnd,bhnjd->bhnj", q, k_local) * self.head_dim**-0.5 + self.local_mask
            probs = logits.softmax(dim=-1)
            self.record(probs, self._to_dense)
            out = torch.einsum("bhnj,bhnjd->bhnd", probs, v_local)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ConViT(AttentionModel):
    def __init__(self, num_classes: int, img_size: int = 32, in_chans: int = 3, patch_size: int | None = None,
                 kernel_size: int = 3, dim: int = 192, depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop_path_rate: float = 0.0):
        super().__init__()
        patch_size = patch_size or default_patch_size(img_size)
        self.stem = TokenStem(img_size, patch_size, in_chans, dim, class_token=False, pos_embed=True, add_pos=True)
        grid = self.stem.grid
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks_ = nn.ModuleList(
            Block(dim, LocalAttention2d(dim, heads, grid, kernel_size, qkv_bias), mlp_ratio, rates[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(init_transformer_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks_:
            x = block(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(features.mean(dim=1)))

    def blocks(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for i, block in enumerate(self.blocks_):
            named += block.units(f"blocks.{i}")
        return named


@register_model(family="convit", paper=PAPER_PARK)
def convit_ti(
    num_classes: int,
    img_size: int = 32,
    in_chans: int = 3,
    patch_size: int | None = None,
    kernel_size: int = 3,
    depth: int = 12,
    heads: int = 3,
    dim: int = 192,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = False,
    drop_path_rate: float = 0.0,
) -> ConViT:
    """ViT-Ti with local k x k 2-D attention (Park & Kim's ConViT-Ti); k = `kernel_size` (3, 5 or 8 in the paper)."""
    return ConViT(num_classes, img_size, in_chans, patch_size, kernel_size, dim, depth, heads, mlp_ratio, qkv_bias,
                  drop_path_rate)
