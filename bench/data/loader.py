"""The training set as one tensor on the device, served in shuffled, augmented batches.

As in airbench: no DataLoader, no worker processes, no per-sample Python. Real image
datasets are stored as uint8 (1 byte per pixel on the device); synthetic data stays
float (its values are not pixels). Per batch, in this order:

1. gather the batch's rows (uint8 rows are copied as 8-byte words);
2. crop (zero padding) and flip, on the stored pixels, in one gather (`augment.crop_flip`);
3. RandAugment on uint8 pixels (`randaugment`), as torchvision runs it on PIL/uint8 images;
4. normalise to float32 ((x/255 - mean) / std for uint8);
5. Mixup or CutMix on the normalised batch (`mix`), targets become (N, num_classes) rows.

Randomness: crop offsets, flips and the shuffle come from `generator` on the device;
the per-batch draws of RandAugment and Mixup/CutMix (op choices, lam, boxes) come from a
NumPy generator seeded from `generator` at the start of each epoch, so they need no
device round trip, and a run resumed at an epoch boundary replays them exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Sequence

import numpy as np
import torch

from bench.data.augment import crop_flip
from bench.data.mix import mix_batch
from bench.data.randaugment import NUM_BINS, rand_augment
from bench.data.shuffle import BlockShuffle

AUGMENTATIONS = ("crop", "flip", "randaugment", "mixup", "cutmix")
IMAGE_ONLY = frozenset({"crop", "flip", "randaugment", "cutmix"})
#: Augmentations that move pixels: on block-shuffled data they run on the unshuffled image.
SPATIAL = frozenset({"crop", "flip", "randaugment", "cutmix"})


class Normalizer:
    """uint8 or float input -> float32, minus the per-channel mean, over the std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str, image: bool):
        shape = (1, -1, 1, 1) if image else (1, 1, -1)
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(shape)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(shape)
        self._pixel_scale = 1.0 / (255.0 * self.std)
        self._shift = -self.mean / self.std
        self._identity = bool((self.mean == 0).all() and (self.std == 1).all())  # raw patch vectors

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:  # a fresh float tensor: normalise it in place
            return x.float().mul_(self._pixel_scale).add_(self._shift)
        if self._identity and x.dtype == torch.float32:
            return x  # callers never write into a batch, so the stored data is safe
        return (x.float() - self.mean) / self.std  # never in place: x may be the stored data


def take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[idx] along dim 0; uint8 rows whose size allows it are moved as int64 words (several times faster)."""
    row_bytes = x[0].numel() * x.element_size() if len(x) else 0
    if x.dtype == torch.uint8 and x.is_contiguous() and row_bytes % 8 == 0 and row_bytes:
        words = x.view(len(x), -1).view(torch.int64)
        return words.index_select(0, idx).view(torch.uint8).view(len(idx), *x.shape[1:])
    return x.index_select(0, idx)


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
        block_shuffle: BlockShuffle | None = None,
    ):
        augment = tuple(augment)
        unknown = set(augment) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)} (known: {', '.join(AUGMENTATIONS)})")
        image_only = sorted(set(augment) & IMAGE_ONLY)
        if image_only and x.ndim != 4:
            raise ValueError(f"{', '.join(image_only)} need image inputs (N, C, H, W), got shape {tuple(x.shape)}")
        if "randaugment" in augment:
            if x.dtype != torch.uint8:
                raise ValueError("randaugment needs uint8 images (a real image dataset), not float data")
            if not 0 <= randaugment_m < NUM_BINS:
                raise ValueError(f"randaugment_m must be in 0..{NUM_BINS - 1}, got {randaugment_m}")
        self.mixing = "mixup" in augment or "cutmix" in augment
        if self.mixing and not num_classes:
            raise ValueError("mixup/cutmix need num_classes for their one-hot targets")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.normalize = normalize
        self.augment = augment
        self.generator = generator
        self.num_classes = num_classes
        self.crop_padding = crop_padding if "crop" in augment else 0
        self.randaugment_n = randaugment_n
        self.randaugment_m = randaugment_m
        self.mixup_alpha = mixup_alpha if "mixup" in augment else None
        self.cutmix_alpha = cutmix_alpha if "cutmix" in augment else None
        self.shuffle = shuffle
        # Block-shuffled data is augmented in image space: unshuffle, augment, shuffle again.
        self.block_shuffle = block_shuffle if set(augment) & SPATIAL else None

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def _epoch_rng(self) -> np.random.Generator | None:
        """The NumPy generator of this epoch's per-batch draws (only when an augmentation needs one)."""
        if not (self.mixing or "randaugment" in self.augment):
            return None
        seed = torch.randint(0, 2**62, (1,), device=self.x.device, generator=self.generator).item()
        return np.random.default_rng(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        device = self.x.device
        if self.shuffle:
            order = torch.randperm(n, device=device, generator=self.generator)
        else:
            order = torch.arange(n, device=device)
        rng = self._epoch_rng()
        crop_or_flip = self.crop_padding > 0 or "flip" in self.augment
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            xb = take_rows(self.x, idx)
            if self.block_shuffle is not None:
                xb = self.block_shuffle.unshuffle(xb)
            if crop_or_flip:
                xb = crop_flip(xb, self.crop_padding, "flip" in self.augment, self.generator)
            if "randaugment" in self.augment:
                xb = rand_augment(xb, self.randaugment_n, self.randaugment_m, rng)
            xb = self.normalize(xb)
            yb = self.y.index_select(0, idx)
            if self.mixing:
                xb, yb = mix_batch(xb, yb, self.num_classes, self.mixup_alpha, self.cutmix_alpha, rng)
            if self.block_shuffle is not None:
                xb = self.block_shuffle.shuffle(xb)
            yield xb, yb
