"""Control data for the spatial-structure experiments (Jelassi, Sander & Li 2022, Fig. 2).

The patches are i.i.d. standard Gaussian, X_j ~ N(0, I_d); the label is the sign of a
one-hidden-layer CNN with cubic activation whose receptive fields are the sets of the
partition: with K filters W_k (one d-vector per position in a set) shared across sets
and readout signs a_k,

    f(X) = sum_k a_k sum_l ( sum_m <W_k,m, X_{S_l[m]}> )^3,   label = 1[f(X) > 0].

The label depends on the sets, but the inputs carry no structure: a ViT can learn the
task, yet its positional attention shows no patch association. That contrast is what
the control is for. f is odd in X, so the two classes are equally likely.

(open) The paper does not give K, the filter distribution or the readout: K = `hidden`
(default 1), W ~ N(0, 1/(C d)) so each pre-activation has unit variance, a_k = +-1
seeded; all drawn from `teacher_seed`. Layout, forms and normalisation as for `spatial`
(see `bench.data.patchgrid`); the default sets are 2 x 2 blocks of a 4 x 4 grid.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bench.data.patchgrid import (
    PatchDataOptions,
    make_partition,
    sample_generator,
    splits_from_patches,
)
from bench.data.registry import Splits, register_dataset
from bench.data.streams import stream_generator


class ControlOptions(PatchDataOptions):
    name: Literal["spatial_control"] = "spatial_control"
    hidden: int = Field(1, ge=1)  # K, the teacher's filters
    teacher_seed: int = 0


def make_teacher(hidden: int, set_size: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Filters (K, C, d) with unit-variance pre-activations on N(0, I) patches, and readout signs (K,)."""
    gen = stream_generator("teacher", seed)
    filters = torch.randn(hidden, set_size, dim, generator=gen) / (set_size * dim) ** 0.5
    signs = torch.randint(0, 2, (hidden,), generator=gen).float() * 2 - 1
    return filters, signs


def teacher_output(patches: torch.Tensor, partition: list[list[int]], filters: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """f(X) for (n, D, d) patches: the cubic CNN over the sets, summed over sets and filters."""
    sets = torch.tensor(partition)  # (L, C): position m of set l is patch sets[l, m]
    grouped = patches[:, sets]  # (n, L, C, d)
    pre = torch.einsum("nlcd,kcd->nlk", grouped, filters)
    return (pre**3).sum(dim=1) @ signs


@register_dataset("spatial_control", ControlOptions, input_kinds=("image", "patches"))
def load_control(options: ControlOptions, input_kind: str) -> Splits:
    dim = options.patch_dim_for(input_kind)
    partition = make_partition(options)
    filters, signs = make_teacher(options.hidden, options.set_size, dim, options.teacher_seed)
    splits = []
    for split, n in ((0, options.num_train), (1, options.num_test)):
        gen = sample_generator(options.name, options.sample_seed, split, options.teacher_seed)
        patches = torch.randn(n, options.n_patches, dim, generator=gen)
        splits.append((patches, (teacher_output(patches, partition, filters, signs) > 0).long()))
    meta = {"partition": partition, "classes": ["f<=0", "f>0"], "teacher_hidden": options.hidden}
    return splits_from_patches(options, input_kind, splits[0], splits[1], num_classes=2, meta=meta)
