"""Spatially structured synthetic data (Jelassi, Sander & Li 2022, Assumption 1).

An input has D patches in R^d; the patch indices are split into L sets of C. A unit
feature w* and a label y in {-1, +1}: every patch of one uniformly chosen set is
y*w* + noise, every other patch is delta*w* + noise with delta = +-1 w.p. q/2 each and 0
otherwise, and the noise is N(0, sigma^2 (I - w* w*^T)). Only which sign fills a whole set
decides the label, so a model must learn the partition to do better than counting signs.

Image form: a grid x grid array of patch_size x patch_size x channels blocks (d = p*p*c).
Patch form: the (D, d) patch vectors, for `pa_theory`.

Seeds: `feature_seed` draws w*, `partition_seed` the random partition, `sample_seed` the
samples. A transfer target keeps the partition seed and changes the feature seed.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from bench.data.registry import DatasetOptions, Splits, register_dataset


class SpatialOptions(DatasetOptions):
    name: Literal["spatial"] = "spatial"
    patch_size: int = Field(4, ge=1)
    grid: int = Field(4, ge=1)
    channels: int = Field(3, ge=1)
    set_size: int = Field(4, ge=1)
    partition: Literal["blocks", "random"] = "blocks"
    q: float = Field(0.5, ge=0, le=1)
    sigma: float = Field(0.5, ge=0)
    num_train: int = Field(4096, ge=2)
    num_test: int = Field(2048, ge=2)
    feature_seed: int = 0
    partition_seed: int = 0
    sample_seed: int = 0

    @model_validator(mode="after")
    def _partition_fits(self) -> "SpatialOptions":
        patches = self.grid**2
        if patches % self.set_size:
            raise ValueError(f"set_size {self.set_size} does not divide the {patches} patches of a {self.grid}x{self.grid} grid")
        if self.partition == "blocks":
            side = math.isqrt(self.set_size)
            if side * side != self.set_size or self.grid % side:
                raise ValueError(
                    f"partition 'blocks' needs set_size = b*b with b dividing grid {self.grid}, got {self.set_size}"
                )
        return self

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2 * self.channels


def make_feature(dim: int, seed: int) -> torch.Tensor:
    """The unit feature vector w*, drawn from its own seed."""
    w = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (w / w.norm()).float()


def make_partition(options: SpatialOptions) -> list[list[int]]:
    """The sets S_1..S_L as lists of patch indices (row-major over the grid)."""
    g, c = options.grid, options.set_size
    if options.partition == "blocks":
        b = math.isqrt(c)
        per_row = g // b
        sets: list[list[int]] = [[] for _ in range(g * g // c)]
        for j in range(g * g):
            r, col = divmod(j, g)
            sets[(r // b) * per_row + col // b].append(j)
        return sets
    perm = torch.randperm(g * g, generator=torch.Generator().manual_seed(options.partition_seed)).tolist()
    return [sorted(perm[i : i + c]) for i in range(0, g * g, c)]


def sample_patches(
    n: int, feature: torch.Tensor, partition: list[list[int]], q: float, sigma: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n samples of Assumption 1: patches (n, D, d), labels y in {-1,+1} (n,), signal set index (n,)."""
    num_patches = sum(len(s) for s in partition)
    set_of_patch = torch.empty(num_patches, dtype=torch.long)
    for index, members in enumerate(partition):
        set_of_patch[members] = index
    y = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    signal_set = torch.randint(0, len(partition), (n,), generator=generator)
    u = torch.rand(n, num_patches, generator=generator)
    delta = (u < q / 2).long() - ((u >= q / 2) & (u < q)).long()
    in_signal = set_of_patch[None, :] == signal_set[:, None]
    coef = torch.where(in_signal, y[:, None], delta).float()
    noise = torch.randn(n, num_patches, feature.numel(), generator=generator) * sigma
    noise -= (noise @ feature)[..., None] * feature  # project out w*: noise is orthogonal to the feature
    return coef[..., None] * feature + noise, y, signal_set


def patches_to_images(patches: torch.Tensor, grid: int, patch_size: int, channels: int) -> torch.Tensor:
    """(n, D, p*p*c) patch vectors -> (n, c, grid*p, grid*p) images, patch j at row j // grid."""
    n = patches.shape[0]
    x = patches.view(n, grid, grid, channels, patch_size, patch_size)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(n, channels, grid * patch_size, grid * patch_size)


def _split_generator(sample_seed: int, split: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * sample_seed + split)


@register_dataset("spatial", SpatialOptions, input_kinds=("image", "patches"))
def load_spatial(options: SpatialOptions, input_kind: str) -> Splits:
    feature = make_feature(options.patch_dim, options.feature_seed)
    partition = make_partition(options)
    splits = []
    for split, n in ((0, options.num_train), (1, options.num_test)):
        patches, y, _ = sample_patches(n, feature, partition, options.q, options.sigma, _split_generator(options.sample_seed, split))
        x = patches if input_kind == "patches" else patches_to_images(patches, options.grid, options.patch_size, options.channels)
        splits.append((x, (y > 0).long()))
    (train_x, train_y), (test_x, test_y) = splits
    dims = (0, 1) if input_kind == "patches" else (0, 2, 3)
    mean = train_x.mean(dim=dims)
    std = train_x.std(dim=dims)
    if input_kind == "patches":
        mean, std = mean.mean().reshape(1), std.mean().reshape(1)
    return Splits(
        train_x, train_y, test_x, test_y, num_classes=2,
        mean=tuple(mean.tolist()), std=tuple(std.tolist()),
        meta={"partition": partition, "feature": feature.tolist(), "classes": ["y=-1", "y=+1"]},
    )
