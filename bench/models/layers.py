"""Building blocks shared by the zoo's models.

Every attention module is an `AttentionLayer`: it has a `fused` flag (PyTorch's
`scaled_dot_product_attention` kernels, fast; or the plain math path, which has a double
backward for Hessian-vector products) and can record its attention map as a dense
(batch, heads, tokens, tokens) tensor, which is how `AttentionModel.attention_maps`
reads every model the same way.

Residual units (`AttentionUnit`, `MlpUnit`) are modules whose input and output are the
residual stream, so analyses can hook them and a lesion can replace one by its input.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ToDense = Callable[[torch.Tensor], torch.Tensor]


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_head) + bias): the math path, with SDPA's default scale."""
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1)


class AttentionLayer(nn.Module):
    """Base of every attention module: the fused/math switch and map recording.

    `fused` is flipped by `set_attention_impl`; `map_sink` is set (to a list) by
    `AttentionModel.attention_maps` for one forward pass, during which the layer takes
    the math path and appends its map in dense (batch, heads, tokens, tokens) form.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fused = True
        self.map_sink: list[torch.Tensor] | None = None

    def record(self, probs: torch.Tensor, to_dense: ToDense | None = None) -> None:
        if self.map_sink is not None:
            self.map_sink.append((probs if to_dense is None else to_dense(probs)).detach())

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None = None,
        to_dense: ToDense | None = None,
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_head) + bias) v by the fused kernel or the math path."""
        if self.fused and self.map_sink is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        probs = attention_probs(q, k, bias)
        self.record(probs, to_dense)
        return probs @ v


class Attention(AttentionLayer):
    """Multi-head self-attention over tokens (B, N, C); `pos` is accepted and ignored."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = False, proj_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = self.attend(q, k, v)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class PositionalAttention(AttentionLayer):
    """Attention whose map depends on the positional encodings only (Jelassi et al. 2022).

    Queries and keys come from the positional encodings P (tokens x dim), values from the
    tokens X: S = softmax(P W_Q (P W_K)^T / sqrt(d_head)) per head, out = S X W_V. The map
    is the same for every input, so it is computed once per forward and shared by the
    batch: the fused path folds the batch into the value dimension of one SDPA call.

    P is passed in (`pos`, shared by all layers) or owned by the layer (`tokens` given:
    one P per layer).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = False, proj_drop: float = 0.0,
                 tokens: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos = None
        if tokens is not None:
            self.pos = nn.Parameter(torch.zeros(tokens, dim))
            nn.init.trunc_normal_(self.pos, std=0.02)

    def _pos(self, pos: torch.Tensor | None) -> torch.Tensor:
        pos = self.pos if self.pos is not None else pos
        if pos is None:
            raise ValueError("positional attention needs the positional encodings")
        return pos

    def scores(self, pos: torch.Tensor | None = None) -> torch.Tensor:
        """(heads, tokens, tokens) attention map from the (tokens, dim) positional encodings."""
        pos = self._pos(pos)
        n = pos.shape[0]
        q, k = self.qk(pos).view(n, 2, self.heads, self.head_dim).permute(1, 2, 0, 3)
        return attention_probs(q, k)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        pos = self._pos(pos)
        b, n, c = x.shape
        q, k = self.qk(pos).view(n, 2, self.heads, self.head_dim).permute(1, 2, 0, 3)
        v = self.v(x).view(b, n, self.heads, self.head_dim).permute(2, 1, 0, 3).reshape(1, self.heads, n, b * self.head_dim)
        out = self.attend(q[None], k[None], v, to_dense=lambda p: p.expand(b, -1, -1, -1))
        out = out.view(self.heads, n, b, self.head_dim).permute(2, 1, 0, 3).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0, out_dim: int | None = None):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, out_dim or dim),
                         nn.Dropout(drop))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


def drop_path_rates(rate: float, total: int) -> list[float]:
    """Stochastic-depth rate rising linearly from 0 to `rate` over `total` blocks."""
    return torch.linspace(0, rate, max(total, 1)).tolist()


class AttentionUnit(nn.Module):
    """x + drop_path(attn(norm(x))): the MSA half of a pre-norm transformer block."""

    kind = "msa"

    def __init__(self, dim: int, attn: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = attn
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.drop_path(self.attn(self.norm(x), pos))


class MlpUnit(nn.Module):
    """x + drop_path(mlp(norm(x))): the MLP half of a pre-norm transformer block."""

    kind = "mlp"

    def __init__(self, dim: int, hidden: int, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm(x)))


class Block(nn.Module):
    """Pre-norm transformer block as two residual units, `msa` then `mlp`."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.msa = AttentionUnit(dim, attn, drop_path)
        self.mlp = MlpUnit(dim, int(dim * mlp_ratio), drop_path)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(self.msa(x, pos))

    def units(self, prefix: str) -> list[tuple[str, nn.Module]]:
        return [(f"{prefix}.msa", self.msa), (f"{prefix}.mlp", self.mlp)]


def init_transformer_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated normal (std 0.02) linear weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def set_attention_impl(model: nn.Module, impl: str) -> None:
    """'fused' (SDPA kernels, fast) or 'math' (explicit softmax, supports double backward)."""
    if impl not in ("fused", "math"):
        raise ValueError(f"attention impl must be 'fused' or 'math', not {impl!r}")
    for module in model.modules():
        if hasattr(module, "fused"):
            module.fused = impl == "fused"
