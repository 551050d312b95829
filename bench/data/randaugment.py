"""RandAugment on batches of uint8 images on the device, with each image's own random ops.

Semantics are torchvision's `transforms.v2.RandAugment(num_ops=n, magnitude=m)` (31
magnitude bins, nearest interpolation, black fill) applied to every image separately,
as a torchvision Dataset would: for each of the n rounds every image draws one of the 14
ops uniformly (Identity included) and, for the signed ops, a sign with probability 1/2.
Batching without per-sample Python: the images of a batch are grouped by (op, sign), and
each group goes through the torchvision.transforms.v2.functional op as one batch, so a
round costs at most 23 batched calls whatever the batch size. The ops and magnitudes
mirror torchvision's own table and dispatch (`_AUGMENTATION_SPACE`,
`_apply_image_or_video_transform`); a test checks them image by image against it.

Note: the paper's code (Park & Kim) used timm's `rand-m9-n2-mstd0.5`, whose m runs to 10
and whose ops differ (probability 1/2 per op, magnitude noise, Invert, SolarizeAdd);
m9 here is on torchvision's 0..30 scale, the range of `train.randaugment_m`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

OPS: tuple[str, ...] = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)
SIGNED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"})
NUM_BINS = 31


@lru_cache(maxsize=512)
def op_magnitude(op: str, magnitude: int, height: int, width: int, num_bins: int = NUM_BINS) -> float:
    """The op's strength at bin `magnitude`, computed as torchvision computes it (before the sign)."""
    def bins(stop: float, start: float = 0.0) -> float:
        return float(torch.linspace(start, stop, num_bins)[magnitude])

    if op in ("ShearX", "ShearY"):
        return bins(0.3)
    if op == "TranslateX":
        return bins(150.0 / 331.0 * width)
    if op == "TranslateY":
        return bins(150.0 / 331.0 * height)
    if op == "Rotate":
        return bins(30.0)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return bins(0.9)
    if op == "Posterize":
        return float((8 - (torch.arange(num_bins) / ((num_bins - 1) / 4))).round().int()[magnitude])
    if op == "Solarize":
        return bins(0.0, start=1.0)
    return 0.0


def apply_op(images: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One RandAugment op with one signed magnitude on a batch of uint8 images (torchvision's dispatch)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    nearest = InterpolationMode.NEAREST
    if op == "Identity":
        return images
    if op in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0,
                         shear=[shear, 0.0] if op == "ShearX" else [0.0, shear],
                         interpolation=nearest, fill=None, center=[0, 0])
    if op in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if op == "TranslateX" else [0, int(magnitude)]
        return TF.affine(images, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest, fill=None)
    if op == "Rotate":
        return TF.rotate(images, angle=magnitude, interpolation=nearest, fill=None)
    if op == "Brightness":
        return TF.adjust_brightness(images, brightness_factor=1.0 + magnitude)
    if op == "Color":
        return TF.adjust_saturation(images, saturation_factor=1.0 + magnitude)
    if op == "Contrast":
        return TF.adjust_contrast(images, contrast_factor=1.0 + magnitude)
    if op == "Sharpness":
        return TF.adjust_sharpness(images, sharpness_factor=1.0 + magnitude)
    if op == "Posterize":
        return TF.posterize(images, bits=int(magnitude))
    if op == "Solarize":
        return TF.solarize(images, threshold=255.0 * magnitude)
    if op == "AutoContrast":
        return TF.autocontrast(images)
    if op == "Equalize":
        return TF.equalize(images)
    raise ValueError(f"unknown RandAugment op {op!r}")


def draw_ops(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One round's choices: an op index per image, and whether its magnitude is negated."""
    return rng.integers(0, len(OPS), size=batch), rng.random(batch) < 0.5


def apply_choices(images: torch.Tensor, ops: np.ndarray, negative: np.ndarray, magnitude: int) -> torch.Tensor:
    """Apply each image's chosen op (one round), one batched call per (op, sign) group."""
    out = images.clone()
    h, w = images.shape[-2:]
    for k, op in enumerate(OPS):
        if op == "Identity":
            continue
        strength = op_magnitude(op, magnitude, h, w)
        chosen = ops == k
        groups = ((chosen & ~negative, strength), (chosen & negative, -strength)) if op in SIGNED else ((chosen, strength),)
        for mask, signed in groups:
            sel = np.flatnonzero(mask)
            if sel.size:
                idx = torch.from_numpy(sel)
                if images.device.type != "cpu":
                    idx = idx.to(images.device, non_blocking=True)
                out.index_copy_(0, idx, apply_op(images.index_select(0, idx), op, signed))
    return out


def rand_augment(images: torch.Tensor, num_ops: int, magnitude: int, rng: np.random.Generator) -> torch.Tensor:
    """RandAugment(num_ops, magnitude) with independent choices per image; uint8 (N, C, H, W) in and out."""
    if images.dtype != torch.uint8:
        raise ValueError("randaugment works on uint8 images (real image datasets), not on float data")
    if not 0 <= magnitude < NUM_BINS:
        raise ValueError(f"randaugment magnitude must be in 0..{NUM_BINS - 1}, got {magnitude}")
    for _ in range(num_ops):
        ops, negative = draw_ops(len(images), rng)
        images = apply_choices(images, ops, negative, magnitude)
    return images
