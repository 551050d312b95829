"""Batched crop and flip on the device: whole batches at once, no per-sample Python.

They run on the stored pixels (uint8 for real datasets) before normalisation, as
torchvision's RandomCrop(padding) + RandomHorizontalFlip do on PIL images: the padding is
black (0), not the dataset mean. Crop and flip are one gather, so a batch is read once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Zero-pad by `padding`, crop back to size at a random offset per image, then mirror half the images."""
    b, c, h, w = x.shape
    dev = x.device
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    else:
        dy = dx = torch.zeros(b, dtype=torch.long, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        mirrored = torch.rand(b, device=dev, generator=generator) < 0.5
        cols = torch.where(mirrored[:, None], w - 1 - cols, cols)
    width = w + 2 * padding
    rows = (torch.arange(h, device=dev)[None, :] + dy[:, None]) * width
    index = (rows[:, :, None] + (cols + dx[:, None])[:, None, :]).view(b, 1, h * w)
    return x.reshape(b, c, -1).gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero-pad by `padding` and crop back to size at a random offset per image."""
    return crop_flip(x, padding, False, generator) if padding else x


def random_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    return crop_flip(x, 0, True, generator)
