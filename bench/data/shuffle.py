"""Block-shuffled images (Jelassi, Sander & Li 2022: block-shuffled CIFAR-100).

`shuffle_grid: g` cuts every image into g x g-pixel blocks and moves them by one fixed,
seeded permutation, the same for every image of the dataset (train and test). g is the
block's side in pixels, which is what makes the paper's grid list (2, 4, 8, 16, 32 at
32 px; "32 = no shuffle") consistent: g = 32 is a single block, the identity; g = 2
shuffles 256 blocks, and a ViT with patch 2 sees the same tokens in another order at
every g, which is why its accuracy does not move. g must divide the image size.

The shuffle is part of the dataset, applied once when it is loaded (train and test), so
the stored images are the shuffled ones. Augmentation must not run on them: a crop offset
that is not a multiple of the block, or a flip, would change the tiles themselves, and a
ViT with small patches would no longer see "the same tokens in another order". So the
on-device loader augments in image space: it undoes the shuffle of each batch, crops,
flips, RandAugments and CutMixes the natural images, and shuffles the result again
(`BlockShuffle`, two gathers per batch). The permutation is drawn from `shuffle_seed` and
redrawn until it is not the identity (when there are >= 2 blocks).
"""

from __future__ import annotations

import torch


def block_permutation(num_blocks: int, seed: int) -> torch.Tensor:
    """A seeded permutation of the blocks; never the identity when there is more than one block."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_blocks, generator=gen)
    while num_blocks > 1 and torch.equal(perm, torch.arange(num_blocks)):
        perm = torch.randperm(num_blocks, generator=gen)
    return perm


def block_shuffle(images: torch.Tensor, block: int, seed: int) -> torch.Tensor:
    """(N, C, H, W) -> the same images with their block x block tiles permuted; block position i gets tile perm[i]."""
    n, c, h, w = images.shape
    if h % block or w % block:
        raise ValueError(f"shuffle_grid {block} does not divide the {h}x{w} images")
    gh, gw = h // block, w // block
    if gh * gw == 1:
        return images
    return permute_blocks(images, block, block_permutation(gh * gw, seed))


class BlockShuffle:
    """The dataset's block permutation as a batch transform, and its inverse (see the module doc)."""

    def __init__(self, block: int, seed: int, image_size: int, device: torch.device | str = "cpu"):
        g = image_size // block
        self.block = block
        self.perm = block_permutation(g * g, seed).to(device)
        self.inverse = torch.argsort(self.perm)

    def shuffle(self, images: torch.Tensor) -> torch.Tensor:
        return permute_blocks(images, self.block, self.perm)

    def unshuffle(self, images: torch.Tensor) -> torch.Tensor:
        return permute_blocks(images, self.block, self.inverse)


def permute_blocks(images: torch.Tensor, block: int, perm: torch.Tensor) -> torch.Tensor:
    """Block position i of the result gets tile perm[i] of `images`."""
    n, c, h, w = images.shape
    gh, gw = h // block, w // block
    tiles = images.reshape(n, c, gh, block, gw, block).permute(0, 1, 2, 4, 3, 5).reshape(n, c, gh * gw, block, block)
    tiles = tiles[:, :, perm]
    return tiles.reshape(n, c, gh, gw, block, block).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w).contiguous()
