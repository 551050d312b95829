"""Users' own images: `root` with `train/` and `test/`, one sub-folder per class (torchvision's ImageFolder layout).

Classes are the sub-folders of `train/` (sorted, as ImageFolder does); `test/` may
lack some but may not add new ones. Every image is decoded once, converted to RGB and
kept as uint8, so the images must share one size, or `img_size` resizes them all to
img_size x img_size (bilinear, antialiased). Normalisation statistics are computed from
the training split.

The folder's path is not part of trial ids (the same data elsewhere is the same trial),
but its last component is: two different folders in one sweep stay two trials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from bench.data.imagesets import ImageSetOptions, assemble, channel_stats
from bench.data.registry import Splits, register_dataset
from bench.errors import BenchInputError, DataUnavailable

SPLITS = ("train", "test")


class ImageFolderOptions(ImageSetOptions):
    name: Literal["imagefolder"] = "imagefolder"
    root: str  # required: there is no default place for users' own data
    download: Literal[False] = False  # nothing to download: it is the user's own data
    img_size: int | None = Field(None, ge=1)

    def hash_extra(self) -> dict[str, Any]:
        return {"folder": Path(self.root).expanduser().name}


def _root(options: ImageFolderOptions) -> Path:
    return Path(options.root).expanduser().absolute()


def _files(options: ImageFolderOptions) -> dict[str, tuple[list[str], list[tuple[str, int]]]]:
    """Per split: the class names and the (path, class index) samples, as torchvision's ImageFolder finds them."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = _root(options)
    for split in SPLITS:
        if not (root / split).is_dir():
            raise DataUnavailable(
                f"dataset 'imagefolder': {root / split} not found; root must hold train/ and test/, "
                "each with one sub-folder of images per class"
            )
    try:
        classes, class_to_idx = find_classes(str(root / "train"))
    except FileNotFoundError as exc:
        raise DataUnavailable(f"dataset 'imagefolder': {exc}") from None
    test_classes = [p.name for p in (root / "test").iterdir() if p.is_dir()]
    extra = sorted(set(test_classes) - set(classes))
    if extra:
        raise BenchInputError(f"dataset 'imagefolder': {root / 'test'} has classes that train/ lacks: {', '.join(extra)}")
    found = {}
    for split in SPLITS:
        samples = make_dataset(str(root / split), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise DataUnavailable(f"dataset 'imagefolder': no images under {root / split}")
        found[split] = (classes, samples)
    return found


def check_imagefolder(options: ImageFolderOptions) -> None:
    _files(options)


def read_images(samples: list[tuple[str, int]], img_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image to RGB uint8 (N, 3, H, W); all of one size unless `img_size` resizes them."""
    from PIL import Image

    arrays, size = [], None
    for path, _ in samples:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img_size is not None:
                    img = img.resize((img_size, img_size), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except OSError as exc:
            raise DataUnavailable(f"dataset 'imagefolder': could not read {path}: {exc}") from None
        if size is None:
            size = array.shape
        elif array.shape != size:
            raise BenchInputError(
                f"dataset 'imagefolder': {path} is {array.shape[1]}x{array.shape[0]}, others {size[1]}x{size[0]}; "
                "set img_size to resize them all"
            )
        arrays.append(array)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([label for _, label in samples], dtype=torch.long)


@register_dataset("imagefolder", ImageFolderOptions, check=check_imagefolder)
def load_imagefolder(options: ImageFolderOptions, input_kind: str) -> Splits:
    found = _files(options)
    classes = found["train"][0]
    train = read_images(found["train"][1], options.img_size)
    test = read_images(found["test"][1], options.img_size)
    if train[0].shape[1:] != test[0].shape[1:]:
        raise BenchInputError(
            f"dataset 'imagefolder': train images are {tuple(train[0].shape[1:])}, test images "
            f"{tuple(test[0].shape[1:])}; set img_size to resize them all"
        )
    return assemble(options, train, test, classes, channel_stats(train[0]), meta={"path": str(_root(options))})
