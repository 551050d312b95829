"""SVHN (cropped digits), read from torchvision's on-disk layout.

`<root>/train_32x32.mat` and `<root>/test_32x32.mat` (MATLAB files: 'X' uint8 of shape
(32, 32, 3, N), 'y' (N, 1) with 10 standing for the digit 0), read with scipy as
torchvision does; torchvision itself only downloads (verifying the checksum), because its
SVHN class re-checks hard-coded MD5 sums on every load. The 'extra' split is not used.
Normalisation constants are the per-channel mean and std of the training set. With
`download: true` a missing file is fetched by `check` (bench run's preflight) or at load.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from bench.data.imagesets import ImageSetOptions, assemble
from bench.data.registry import Splits, register_dataset
from bench.data.roots import data_root, fetch, missing
from bench.errors import DataUnavailable

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
MEAN, STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)


class SvhnOptions(ImageSetOptions):
    name: Literal["svhn"] = "svhn"
    image_size: ClassVar[int | None] = 32


def _download(root: Path) -> None:
    from torchvision.datasets import SVHN
    from torchvision.datasets.utils import download_url

    for split in FILES:
        url, filename, md5 = SVHN.split_list[split]
        download_url(url, str(root), filename, md5)


def check_svhn(options: SvhnOptions) -> None:
    """Both .mat files there, or fetched now when download is on; else DataUnavailable naming them."""
    root = data_root(options.root)
    if all((root / f).is_file() for f in FILES.values()):
        return
    if options.download:
        fetch("svhn", root, lambda: _download(root))
        return
    raise missing("svhn", root, " and ".join(FILES.values()))


def read_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images and int64 labels 0..9 from one SVHN .mat file."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat["X"], mat["y"]
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise DataUnavailable(f"could not read {path}: {exc}") from None
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)), dtype=np.uint8)  # (H, W, C, N) -> (N, C, H, W)
    labels = y.astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    return torch.from_numpy(images), torch.from_numpy(labels)


@register_dataset("svhn", SvhnOptions, check=check_svhn)
def load_svhn(options: SvhnOptions, input_kind: str) -> Splits:
    check_svhn(options)
    root = data_root(options.root)
    train, test = read_mat(root / FILES["train"]), read_mat(root / FILES["test"])
    return assemble(options, train, test, [str(d) for d in range(10)], (MEAN, STD), meta={"path": str(root)})
