"""A small *real* 10-class image dataset that exists offline: scikit-learn's handwritten digits.

1,797 grey 8x8 scans (UCI optdigits), written as an ImageFolder of RGB PNGs upscaled to
`size` px, split 80/20 stratified with a fixed seed (1,437 train / 360 test). Tests
use it where "clearly beats chance" must mean learning from real images, not noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_digits_imagefolder(root: Path, size: int = 32, per_class: int | None = None) -> Path:
    """Write `root/train/<digit>/*.png` and `root/test/<digit>/*.png`; returns `root`.

    `per_class` caps the training images per class (the test split stays whole).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    labels = digits.target
    rng = np.random.default_rng(0)
    root = Path(root)
    for label in range(10):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_test = len(index) // 5
        splits = {"test": index[:n_test], "train": index[n_test:]}
        if per_class is not None:
            splits["train"] = splits["train"][:per_class]
        for split, members in splits.items():
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in members:
                picture = Image.fromarray(images[i], mode="L").resize((size, size), Image.BILINEAR)
                picture.convert("RGB").save(folder / f"{i:04d}.png")
    return root
