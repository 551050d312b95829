"""Building blocks shared by the zoo's attention models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention; `fused` picks PyTorch's SDPA kernel or the plain math path.

    The math path is needed wherever a double backward runs (Hessian-vector products):
    the fused kernels have none. `set_attention_impl` flips it for a whole model.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = False, proj_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = True

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def attention_map(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, heads, tokens, tokens) softmax scores for input x."""
        q, k, _ = self.qkv(x).chunk(3, dim=-1)
        return ((self._heads(q) @ self._heads(k).transpose(-2, -1)) * self.scale).softmax(dim=-1)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class PositionalAttention(nn.Module):
    """Attention whose map depends on the positional encodings only (Jelassi et al. 2022).

    Queries and keys are computed from the positional encodings P (shared by all layers,
    passed in as `pos`), values from the tokens X: S = softmax(P W_Q (P W_K)^T / sqrt(d_h))
    per head, out = S X W_V. The map is the same for every input.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = False, proj_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = True  # the map is input-independent and computed once; kept for a uniform switch

    def scores(self, pos: torch.Tensor) -> torch.Tensor:
        """(heads, tokens, tokens) attention map from the (tokens, dim) positional encodings."""
        n = pos.shape[0]
        q, k = self.qk(pos).view(n, 2, self.heads, self.head_dim).permute(1, 2, 0, 3)
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)

    def attention_map(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        if pos is None:
            raise ValueError("positional attention needs the positional encodings")
        return self.scores(pos).unsqueeze(0).expand(x.shape[0], -1, -1, -1)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        if pos is None:
            raise ValueError("positional attention needs the positional encodings")
        b, n, c = x.shape
        v = self.v(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        out = self.scores(pos) @ v  # (H,T,T) @ (B,H,T,dh) broadcasts over the batch
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim), nn.Dropout(drop))


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


def set_attention_impl(model: nn.Module, impl: str) -> None:
    """'fused' (SDPA kernels, fast) or 'math' (explicit softmax, supports double backward)."""
    if impl not in ("fused", "math"):
        raise ValueError(f"attention impl must be 'fused' or 'math', not {impl!r}")
    for module in model.modules():
        if hasattr(module, "fused"):
            module.fused = impl == "fused"
