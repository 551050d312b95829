"""The uniform model API every zoo model follows.

Analyses and transfer code never look inside a particular architecture: they use
`blocks()` (the named sub-modules whose outputs they hook), `forward_features` /
`forward_head`, and, for attention models, `attention_maps(x)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class BenchModel(nn.Module, ABC):
    """Base class: `forward = forward_head(forward_features(x))`."""

    #: What the model eats: "image" (B, C, H, W) or "patches" (B, D, d).
    input_kind: str = "image"

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything up to the pooled feature vector (or token sequence)."""

    @abstractmethod
    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooling and the classifier."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @abstractmethod
    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Ordered (name, module) pairs whose outputs are the residual stream, stem first."""


class AttentionModel(BenchModel, ABC):
    """A model with attention layers whose maps can be read."""

    @abstractmethod
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (batch, heads, tokens, tokens) tensor per attention layer, in depth order."""
