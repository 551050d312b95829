"""A small *real* 10-class image dataset that exists offline: scikit-learn's handwritten digits.

1,797 grey 8x8 scans (UCI optdigits), written as an ImageFolder of RGB PNGs upscaled to
`size` px, split 80/20 stratified with a fixed seed (1,442 train / 355 test). Tests
use it where "clearly beats chance" must mean learning from real images, not noise.

The same images (32 px, the same split) can also be written in the exact on-disk formats
torchvision reads for CIFAR-10, CIFAR-100 and SVHN, so sweeps written for those datasets
run on real images here (CIFAR/SVHN cannot be downloaded on this machine):

    python -m tests.helpers.digits DIR   # DIR/cifar-10-batches-py/, DIR/cifar-100-python/, DIR/{train,test}_32x32.mat
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


def digit_splits(size: int = 32) -> dict[str, np.ndarray]:
    """The ImageFolder's images and split as arrays: `train`/`test` (n, size, size) uint8 grey, `*_y` digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    labels = digits.target
    rng = np.random.default_rng(0)
    parts: dict[str, list] = {"train": [], "train_y": [], "test": [], "test_y": []}
    for label in range(10):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_test = len(index) // 5
        for split, members in (("test", index[:n_test]), ("train", index[n_test:])):
            for i in members:
                picture = Image.fromarray(images[i], mode="L").resize((size, size), Image.BILINEAR)
                parts[split].append(np.asarray(picture))
                parts[split + "_y"].append(label)
    return {k: np.stack(v) if k in ("train", "test") else np.asarray(v) for k, v in parts.items()}


def _rows(grey: np.ndarray) -> np.ndarray:
    """(n, 32, 32) grey -> CIFAR's (n, 3072) rows: the R, G and B planes one after another."""
    rgb = np.repeat(grey[:, None], 3, axis=1)
    return rgb.reshape(len(grey), -1)


def write_digits_cifar10(root: Path) -> Path:
    """`root/cifar-10-batches-py/` (five training batches, a test batch, batches.meta) holding the digits."""
    import pickle

    split = digit_splits(32)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(len(split["train_y"])), 5)
    batches = [(f"data_batch_{i + 1}", split["train"][c], split["train_y"][c]) for i, c in enumerate(chunks)]
    for name, images, labels in [*batches, ("test_batch", split["test"], split["test_y"])]:
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": _rows(images),
                         "filenames": [f"{i}.png" for i in range(len(labels))]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(d) for d in range(10)], "num_vis": 3072}, f, protocol=2)
    return folder


def write_digits_cifar100(root: Path) -> Path:
    """`root/cifar-100-python/` holding the digits as fine labels 0..9 (coarse label = fine // 5)."""
    import pickle

    split = digit_splits(32)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        fine = split[name + "_y"].tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": _rows(split[name]), "fine_labels": fine, "coarse_labels": [c // 5 for c in fine]}, f,
                        protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return folder


def write_digits_svhn(root: Path) -> Path:
    """`root/{train,test}_32x32.mat` as SVHN ships them: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    import scipy.io

    split = digit_splits(32)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        x = np.repeat(split[name][..., None], 3, axis=-1).transpose(1, 2, 3, 0)
        y = split[name + "_y"].astype(np.uint8)
        y[y == 0] = 10
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": x, "y": y[:, None]})
    return root


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1])
    for write in (write_digits_cifar10, write_digits_cifar100, write_digits_svhn):
        print(write(target))
