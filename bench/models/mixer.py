"""MLP-Mixer (Tolstikhin et al. 2021), Park & Kim's Mixer-Ti: depth 8, hidden 256.

Layout of their `mixer_ti` (how-do-vits-work, models/mixer.py), which matches timm's:
linear patch embedding, per block a token-mixing MLP (hidden 128 = `token_mlp_ratio`
0.5 x 256) and a channel MLP (hidden 1024 = `mlp_ratio` 4 x 256), each pre-LayerNorm
and residual; LayerNorm, mean over tokens, linear classifier.
Open choice: patch size as for ViT-Ti (2 at 32 px, 4 up to 64 px, 16 above); the paper's
CIFAR patch size for Mixer is not stated.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.models.base import BenchModel
from bench.models.layers import DropPath, Mlp, MlpUnit, drop_path_rates, init_transformer_weights
from bench.models.registry import PAPER_PARK, register_model
from bench.models.vit import TokenStem, default_patch_size



class TokenMixUnit(nn.Module):
    """x + drop_path(MLP over the token axis of norm(x)): Mixer's spatial mixing."""

    kind = "token_mix"

    def __init__(self, dim: int, tokens: int, hidden: int, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(tokens, hidden)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm(x).transpose(1, 2)).transpose(1, 2))


class MixerBlock(nn.Module):
    def __init__(self, dim: int, tokens: int, token_hidden: int, channel_hidden: int, drop_path: float):
        super().__init__()
        self.tokens = TokenMixUnit(dim, tokens, token_hidden, drop_path)
        self.channels = MlpUnit(dim, channel_hidden, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channels(self.tokens(x))


class Mixer(BenchModel):
    def __init__(self, num_classes: int, img_size: int = 32, in_chans: int = 3, patch_size: int | None = None,
                 dim: int = 256, depth: int = 8, token_mlp_ratio: float = 0.5, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        patch_size = patch_size or default_patch_size(img_size)
        self.stem = TokenStem(img_size, patch_size, in_chans, dim, class_token=False, pos_embed=False, add_pos=False)
        tokens = self.stem.grid**2
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks_ = nn.ModuleList(
            MixerBlock(dim, tokens, int(dim * token_mlp_ratio), int(dim * mlp_ratio), rates[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(init_transformer_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks_:
            x = block(x)
        return self.norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.mean(dim=1))

    def blocks(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for i, block in enumerate(self.blocks_):
            named += [(f"blocks.{i}.tokens", block.tokens), (f"blocks.{i}.channels", block.channels)]
        return named


@register_model(family="mixer", paper=PAPER_PARK)
def mixer_ti(
    num_classes: int,
    img_size: int = 32,
    in_chans: int = 3,
    patch_size: int | None = None,
    depth: int = 8,
    dim: int = 256,
    token_mlp_ratio: float = 0.5,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
) -> Mixer:
    """Mixer-Ti: depth 8, hidden 256, token MLP 128, channel MLP 1024; patch 2 at 32 px, 16 at 224."""
    return Mixer(num_classes, img_size, in_chans, patch_size, dim, depth, token_mlp_ratio, mlp_ratio, drop_path_rate)
