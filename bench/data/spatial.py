"""Spatially structured synthetic data (Jelassi, Sander & Li 2022, Assumption 1).

An input has D patches in R^d; the patch indices are split into L sets of C. A unit
feature w* and a label y uniform in {-1, +1}: every patch of one uniformly chosen set
(the signal set) is y*w* + noise, every other patch is delta*w* + noise with
delta = +1 w.p. q/2, -1 w.p. q/2 and 0 otherwise (spurious, independent of y), and the
noise is N(0, sigma^2 (I - w* w*^T)), orthogonal to the feature. Only which sign fills a
whole set decides the label, so a model must learn the partition to beat counting signs.

Forms and layout (image grid, D and d of the patch form, partition): see
`bench.data.patchgrid`. Class 1 is y = +1, class 0 is y = -1.

Seeds: `feature_seed` draws w*, `partition_seed` the random partition, `sample_seed`
the samples, each through its own stream (`bench.data.streams`), none of them the model
init's `torch.manual_seed(seed)`. A transfer target keeps the partition seed and changes the feature seed;
the feature seed also salts the sample generator, so the target's samples are
independent of the source's (not the same labels and signal sets under a new feature).

Defaults (open in the paper for images): a 4 x 4 grid of 4 x 4 x 3 patches (16-px
images, d = 48), sets of C = 4 patches as 2 x 2 blocks (L = 4), q = 0.5, sigma = 0.5.
The paper's small experiment is `num_patches: 10, set_size: 2, patch_dim: 10,
partition: random` in the patch form.

Augmentation: crop shifts patches off the grid and flip mirrors w* inside every patch, so
both change the structure this data is about; the paper trains on it without them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bench.data.patchgrid import (
    PatchDataOptions,
    make_partition,
    sample_generator,
    set_index_of_patch,
    splits_from_patches,
)
from bench.data.registry import Splits, register_dataset
from bench.data.streams import stream_generator


class SpatialOptions(PatchDataOptions):
    name: Literal["spatial"] = "spatial"
    q: float = Field(0.5, ge=0, le=1)  # rate of spurious +-w* patches outside the signal set
    sigma: float = Field(0.5, ge=0)  # noise std per direction orthogonal to w*
    feature_seed: int = 0


def make_feature(dim: int, seed: int) -> torch.Tensor:
    """The unit feature vector w*, drawn from its own seed (uniform on the sphere)."""
    w = torch.randn(dim, generator=stream_generator("feature", seed), dtype=torch.float64)
    return (w / w.norm()).float()


def sample_patches(
    n: int, feature: torch.Tensor, partition: list[list[int]], q: float, sigma: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n samples of Assumption 1: patches (n, D, d), labels y in {-1,+1} (n,), signal set index (n,)."""
    set_of_patch = set_index_of_patch(partition)
    num_patches = len(set_of_patch)
    y = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    signal_set = torch.randint(0, len(partition), (n,), generator=generator)
    u = torch.rand(n, num_patches, generator=generator)
    delta = (u < q / 2).long() - ((u >= q / 2) & (u < q)).long()
    in_signal = set_of_patch[None, :] == signal_set[:, None]
    coef = torch.where(in_signal, y[:, None], delta).float()
    noise = torch.randn(n, num_patches, feature.numel(), generator=generator, dtype=torch.float64) * sigma
    w = feature.double()
    noise -= (noise @ w)[..., None] * w  # project out w*: covariance sigma^2 (I - w* w*^T)
    return coef[..., None] * feature + noise.float(), y, signal_set


@register_dataset("spatial", SpatialOptions, input_kinds=("image", "patches"))
def load_spatial(options: SpatialOptions, input_kind: str) -> Splits:
    feature = make_feature(options.patch_dim_for(input_kind), options.feature_seed)
    partition = make_partition(options)
    splits = []
    for split, n in ((0, options.num_train), (1, options.num_test)):
        gen = sample_generator(options.name, options.sample_seed, split, options.feature_seed)
        patches, y, _ = sample_patches(n, feature, partition, options.q, options.sigma, gen)
        splits.append((patches, (y > 0).long()))
    meta = {"partition": partition, "feature": feature.tolist(), "classes": ["y=-1", "y=+1"]}
    return splits_from_patches(options, input_kind, splits[0], splits[1], num_classes=2, meta=meta)
