"""What the real image datasets (cifar10, cifar100, svhn, imagefolder) share: options and assembly.

They are kept as uint8 (N, 3, H, W) tensors, exactly the stored pixels, so a trial can
hold its whole training set on the device and augment it there; normalisation happens
per batch (see `bench.data.loader`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator

from bench.data.registry import DatasetOptions, Splits
from bench.data.shuffle import block_shuffle
from bench.errors import BenchInputError


class ImageSetOptions(DatasetOptions):
    """`root` and `download` say where the data is, not what it is: they do not change trial ids."""

    root: str | None = None
    download: bool = False
    shuffle_grid: int | None = Field(None, ge=1)  # block side in pixels (see bench.data.shuffle)
    shuffle_seed: int = 0

    hash_exclude: ClassVar[tuple[str, ...]] = ("root", "download")
    #: Known image side, so that a bad shuffle_grid is an error when the sweep file is read.
    image_size: ClassVar[int | None] = None

    @model_validator(mode="after")
    def _grid_divides_image(self) -> "ImageSetOptions":
        if self.shuffle_grid is not None and self.image_size is not None and self.image_size % self.shuffle_grid:
            raise ValueError(
                f"shuffle_grid {self.shuffle_grid} must divide the image size {self.image_size} "
                "(it is the side of the shuffled blocks in pixels)"
            )
        return self


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale, accumulated in float64 chunks."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].double().div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.numel() / c
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def assemble(
    options: ImageSetOptions,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    classes: list[str],
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    meta: dict[str, Any] | None = None,
) -> Splits:
    """Splits from uint8 images and int64 labels, block-shuffled if asked."""
    (train_x, train_y), (test_x, test_y) = train, test
    if options.shuffle_grid is not None:
        try:
            train_x = block_shuffle(train_x, options.shuffle_grid, options.shuffle_seed)
            test_x = block_shuffle(test_x, options.shuffle_grid, options.shuffle_seed)
        except ValueError as exc:
            raise BenchInputError(f"dataset '{options.name}': {exc}") from None
    mean, std = stats
    info = {"classes": list(classes), "shuffle_grid": options.shuffle_grid, "shuffle_seed": options.shuffle_seed,
            **(meta or {})}
    return Splits(train_x, train_y, test_x, test_y, num_classes=len(classes), mean=mean, std=std, meta=info)
