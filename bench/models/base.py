"""The uniform model API every zoo model follows.

Analyses and transfer code never look inside a particular architecture: they use
`blocks()` (the named sub-modules whose outputs they hook), `forward_features` /
`forward_head`, `feature_map` (a block output as a spatial map), and, for attention
models, `attention_maps(x)`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from bench.models.layers import AttentionLayer

#: Values of the `kind` attribute of the modules `blocks()` lists.
BLOCK_KINDS = ("stem", "conv", "msa", "mlp", "token_mix", "downsample")

#: Parameter names (last component) that timm keeps out of weight decay: embeddings and bias tables.
NO_WEIGHT_DECAY = frozenset({"pos_embed", "cls_token", "rel_bias", "pos"})


class BenchModel(nn.Module, ABC):
    """Base class: `forward = forward_head(forward_features(x))`."""

    #: What the model eats: "image" (B, C, H, W) or "patches" (B, D, d).
    input_kind: str = "image"
    #: Tokens (CLS) ahead of the patch tokens in (B, N, C) block outputs.
    num_prefix_tokens: int = 0

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
        """Ordered (name, module) pairs, stem first, whose outputs are the residual stream.

        Each module's input is the residual stream before it and its output the stream
        after it (a lesion replaces the output by the input where shapes allow), and each
        has a `kind` in BLOCK_KINDS: transformer blocks are listed as their two residual
        units (`...msa`, `...mlp`), as Park & Kim analyse them.
        """

    def no_weight_decay(self) -> set[str]:
        """Names of parameters to keep out of weight decay besides biases and norms (as timm does)."""
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in NO_WEIGHT_DECAY}

    def feature_map(self, output: torch.Tensor) -> torch.Tensor | None:
        """A block output as a (B, C, h, w) map for spatial analyses (Fourier, variance).

        Conv maps pass through; token sequences (B, N, C) lose their prefix tokens and are
        laid out row-major on a square grid. None when the output has no such layout.
        """
        if output.ndim == 4:
            return output
        if output.ndim == 3:
            tokens = output[:, self.num_prefix_tokens :]
            b, n, c = tokens.shape
            side = math.isqrt(n)
            if side * side == n:
                return tokens.transpose(1, 2).reshape(b, c, side, side)
        return None


class AttentionModel(BenchModel, ABC):
    """A model with attention layers whose maps can be read."""

    def attention_layers(self) -> list[AttentionLayer]:
        return [m for m in self.modules() if isinstance(m, AttentionLayer)]

    def attention_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """What transfer's `freeze_attention` freezes: here every parameter of the attention
        layers; positional-attention models narrow it to what shapes their maps."""
        inside = {id(p) for layer in self.attention_layers() for p in layer.parameters()}
        return [(n, p) for n, p in self.named_parameters() if id(p) in inside]

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (batch, heads, tokens, tokens) tensor per attention layer, in depth order.

        Read from one forward pass in eval mode (no batch-norm updates, no drop-path),
        through the math path; window and local attention give their dense map, zero
        outside each query's window, with tokens in row-major order of the feature map
        (CLS first where there is one).
        """
        layers = self.attention_layers()
        sink: list[torch.Tensor] = []
        was_training = self.training
        self.eval()
        for layer in layers:
            layer.map_sink = sink
        try:
            self(x)
        finally:
            for layer in layers:
                layer.map_sink = None
            self.train(was_training)
        return sink
