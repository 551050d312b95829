"""Mixup and CutMix on a normalised batch, as timm's `Mixup` does them in 'batch' mode.

One draw per batch: with both on, CutMix with probability 1/2 (timm's switch_prob),
else Mixup; lam ~ Beta(alpha, alpha); each image is mixed with the batch in reverse order
(x.flip(0)). CutMix pastes one box of area ratio (1 - lam) at a uniform centre, clipped to
the image, and lam is corrected to the pasted area. Targets are mixed one-hot rows
(N, num_classes); label smoothing is the loss's job (it is linear, so smoothing the mixed
rows equals timm's mixing of smoothed rows). Mixing commutes with the per-channel affine
normalisation, so doing it after normalising equals doing it on pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm's rand_bbox: (y0, y1, x0, x1) of a box of about (1 - lam) of the image, centre uniform, clipped."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    x0, x1 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(y0), int(y1), int(x0), int(x1)


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    mixup_alpha: float | None,
    cutmix_alpha: float | None,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed inputs, mixed one-hot targets (N, num_classes)); pass None for a method that is off."""
    if not mixup_alpha and not cutmix_alpha:
        raise ValueError("mix_batch needs mixup_alpha or cutmix_alpha")
    use_cutmix = bool(cutmix_alpha) and (not mixup_alpha or rng.random() < 0.5)
    partner = x.flip(0)
    if use_cutmix:
        if x.ndim != 4:
            raise ValueError("cutmix needs image inputs (N, C, H, W)")
        lam = float(rng.beta(cutmix_alpha, cutmix_alpha))
        h, w = x.shape[-2:]
        y0, y1, x0, x1 = cutmix_box(h, w, lam, rng)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        lam = float(rng.beta(mixup_alpha, mixup_alpha))
        x = x * lam + partner * (1.0 - lam)
    onehot = F.one_hot(y, num_classes).to(x.dtype)
    return x, onehot * lam + onehot.flip(0) * (1.0 - lam)
