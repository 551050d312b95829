"""The geometry shared by the synthetic datasets: D patches in R^d, split into L sets of C.

Both `spatial` and `spatial_control` are defined on patch vectors and served in two
forms: as images (a grid x grid array of p x p x channels blocks, d = p*p*channels) for
the ViTs and CNNs, and as the (D, d) patch vectors themselves for `pa_theory`. The theory
model uses d = D and the paper's small experiment has D = 10 (not a square), so the patch
form may set D (`num_patches`) and d (`patch_dim`) apart from the image grid; the image
form then refuses those settings rather than silently ignoring them.

Normalisation: the image form is standardised by one scalar mean and std computed from
the training set and repeated for every channel (isotropic, so the geometry of the data,
noise orthogonal to the feature, survives up to scale). The patch form is served raw
(mean 0, std 1): the theory model is stated on the raw X, and its cubic activation makes
its dynamics depend on the scale of X.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from bench.data.registry import DatasetOptions, Splits
from bench.data.streams import stream_generator
from bench.errors import BenchInputError


class PatchDataOptions(DatasetOptions):
    """Options every patch-structured synthetic dataset shares (layout, partition, sizes, seeds)."""

    patch_size: int = Field(4, ge=1)  # image form: p, each patch a p x p x channels block
    grid: int = Field(4, ge=1)  # image form: a grid x grid array of patches, D = grid**2
    channels: int = Field(3, ge=1)
    set_size: int = Field(4, ge=1)  # C; L = D / C
    partition: Literal["blocks", "random"] = "blocks"
    partition_seed: int = 0
    num_patches: int | None = Field(None, ge=1)  # D of the patch form (default grid**2)
    patch_dim: int | None = Field(None, ge=1)  # d of the patch form (default p*p*channels)
    num_train: int = Field(4096, ge=2)
    num_test: int = Field(2048, ge=2)
    sample_seed: int = 0

    @model_validator(mode="after")
    def _partition_fits(self) -> "PatchDataOptions":
        d_count = self.n_patches
        if d_count % self.set_size:
            raise ValueError(f"set_size {self.set_size} does not divide the {d_count} patches")
        if self.partition == "blocks" and self.on_grid:
            side = math.isqrt(self.set_size)
            if side * side != self.set_size or self.grid % side:
                raise ValueError(
                    f"partition 'blocks' needs set_size = b*b with b dividing grid {self.grid}, got {self.set_size}"
                )
        return self

    @property
    def n_patches(self) -> int:
        """D: `num_patches` if given, else the image grid's grid**2."""
        return self.num_patches if self.num_patches is not None else self.grid**2

    @property
    def on_grid(self) -> bool:
        """Whether the patches are the cells of the image grid (so 'blocks' means b x b squares)."""
        return self.n_patches == self.grid**2

    def patch_dim_for(self, input_kind: str) -> int:
        """d: p*p*channels for images; `patch_dim` (if given) for the patch form."""
        image_dim = self.patch_size**2 * self.channels
        if input_kind == "image":
            self.check_image_form()
            return image_dim
        return self.patch_dim if self.patch_dim is not None else image_dim

    def check_image_form(self) -> None:
        """The image form has D = grid**2 and d = p*p*channels; other settings are for the patch form only."""
        if not self.on_grid:
            raise BenchInputError(
                f"dataset '{self.name}': num_patches {self.num_patches} is not grid**2 = {self.grid**2}; "
                "num_patches applies to the patch form (pa_theory) only, use grid for images"
            )
        image_dim = self.patch_size**2 * self.channels
        if self.patch_dim is not None and self.patch_dim != image_dim:
            raise BenchInputError(
                f"dataset '{self.name}': patch_dim {self.patch_dim} is not patch_size**2*channels = {image_dim}; "
                "patch_dim applies to the patch form (pa_theory) only"
            )


def make_partition(options: PatchDataOptions) -> list[list[int]]:
    """The sets S_1..S_L as sorted lists of patch indices (row-major over the grid).

    'blocks': b x b squares of the grid (C = b*b) when the patches are the grid's cells,
    else runs of C consecutive indices. 'random': a seeded random partition
    (`partition_seed`), the same for every feature seed, so a transfer target keeps it.
    """
    d_count, c = options.n_patches, options.set_size
    if options.partition == "random":
        perm = torch.randperm(d_count, generator=stream_generator("partition", options.partition_seed)).tolist()
        return [sorted(perm[i : i + c]) for i in range(0, d_count, c)]
    if not options.on_grid:
        return [list(range(i, i + c)) for i in range(0, d_count, c)]
    g, b = options.grid, math.isqrt(c)
    per_row = g // b
    sets: list[list[int]] = [[] for _ in range(d_count // c)]
    for j in range(d_count):
        r, col = divmod(j, g)
        sets[(r // b) * per_row + col // b].append(j)
    return sets


def set_index_of_patch(partition: list[list[int]]) -> torch.Tensor:
    """(D,) long: the set each patch belongs to."""
    out = torch.empty(sum(len(s) for s in partition), dtype=torch.long)
    for index, members in enumerate(partition):
        out[members] = index
    return out


def patches_to_images(patches: torch.Tensor, grid: int, patch_size: int, channels: int) -> torch.Tensor:
    """(n, D, p*p*c) patch vectors -> (n, c, grid*p, grid*p) images; patch j sits at row j // grid, column j % grid.

    A patch vector is read as a (c, p, p) block, so the same (D, d) data in either form
    holds the same numbers.
    """
    n = patches.shape[0]
    x = patches.reshape(n, grid, grid, channels, patch_size, patch_size)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(n, channels, grid * patch_size, grid * patch_size)


def images_to_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The inverse of `patches_to_images`: (n, c, H, W) -> (n, D, p*p*c)."""
    n, c, h, w = images.shape
    g, p = h // patch_size, patch_size
    x = images.reshape(n, c, g, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, g * (w // p), c * p * p)


def sample_generator(dataset: str, sample_seed: int, split: int, *keys: int) -> torch.Generator:
    """The generator of one split's samples (`bench.data.streams`, purpose `sample`); `keys` (e.g. the
    feature seed) make other data independent."""
    return stream_generator("sample", dataset, sample_seed, split, *keys)


def splits_from_patches(
    options: PatchDataOptions,
    input_kind: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    meta: dict[str, Any],
) -> Splits:
    """Serve (n, D, d) patches and labels as image or patch Splits, with the normalisation described above."""
    (train_x, train_y), (test_x, test_y) = train, test
    if input_kind == "image":
        train_x = patches_to_images(train_x, options.grid, options.patch_size, options.channels)
        test_x = patches_to_images(test_x, options.grid, options.patch_size, options.channels)
        mean = (train_x.double().mean().item(),) * options.channels
        std = (train_x.double().std().item(),) * options.channels
    else:
        mean, std = (0.0,), (1.0,)
    d_count = options.n_patches
    layout = {
        "D": d_count, "L": d_count // options.set_size, "C": options.set_size,
        "d": int(train_x.shape[-1]) if input_kind == "patches" else options.patch_size**2 * options.channels,
        "grid": options.grid if options.on_grid else None, "patch_size": options.patch_size,
        "input_kind": input_kind,
    }
    return Splits(train_x, train_y, test_x, test_y, num_classes=num_classes, mean=mean, std=std, meta={**layout, **meta})
