"""The training set as one tensor on the device, served in shuffled, augmented batches.

As in airbench: no DataLoader, no worker processes, no per-sample Python. Images may be
stored as uint8 (real datasets) or float (synthetic data); batches come out as
normalised float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Sequence

import torch

from bench.data.augment import random_crop, random_flip


class Normalizer:
    """uint8 or float input -> float32, minus the per-channel mean, over the std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, image: bool):
        shape = (1, -1, 1, 1) if image else (1, 1, -1)
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(shape)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std


class DeviceLoader:
    """Shuffled batches of (normalised, augmented inputs, targets), drawn from tensors on the device.

    Targets are class indices (N,), or mixed one-hot rows (N, num_classes) when mixup or
    cutmix is on; label smoothing is the training loss's job, not the loader's.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        normalize: Normalizer,
        augment: Sequence[str] = (),
        generator: torch.Generator | None = None,
        *,
        num_classes: int | None = None,
        crop_padding: int = 4,
        randaugment_n: int = 2,
        randaugment_m: int = 9,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.8,
        shuffle: bool = True,
    ):
        unknown = set(augment) - {"crop", "flip"}
        if unknown:
            raise ValueError(f"augmentations not available in this loader: {sorted(unknown)}")
        if augment and x.ndim != 4:
            raise ValueError("crop/flip need image inputs (N, C, H, W)")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.normalize = normalize
        self.augment = tuple(augment)
        self.crop_padding = crop_padding
        self.generator = generator
        self.shuffle = shuffle

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        device = self.x.device
        if self.shuffle:
            order = torch.randperm(n, device=device, generator=self.generator)
        else:
            order = torch.arange(n, device=device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            xb = self.normalize(self.x[idx])
            if "crop" in self.augment:
                xb = random_crop(xb, self.crop_padding, self.generator)
            if "flip" in self.augment:
                xb = random_flip(xb, self.generator)
            yield xb, self.y[idx]
