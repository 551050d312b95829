"""CIFAR-10 and CIFAR-100, read from torchvision's on-disk layout.

torchvision's CIFAR classes check hard-coded MD5 sums of the files every time they are
built, so we use torchvision only to download (it fetches the archive and verifies its
checksum) and read the pickled batches ourselves, exactly as torchvision does:
`<root>/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta` and
`<root>/cifar-100-python/train, test, meta`, each a pickle of {'data': uint8 (N, 3072)
rows in CHW order, 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100)}.

Normalisation constants are the per-channel mean and std of the training set (the paper's
code used the widespread CIFAR-10 std (0.2023, 0.1994, 0.2010), which is not the
training set's).

With `download: true`, a missing dataset is fetched by `check` (run by `bench run`'s
preflight on the driver, before any trial starts) or at load time otherwise.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from bench.data.imagesets import ImageSetOptions, assemble
from bench.data.registry import Splits, register_dataset
from bench.data.roots import data_root, fetch, missing
from bench.errors import DataUnavailable


@dataclass(frozen=True)
class CifarLayout:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    torchvision_class: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR10 = CifarLayout(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
    "batches.meta", "labels", "label_names", "CIFAR10", 10,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarLayout(
    "cifar100", "cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names", "CIFAR100", 100,
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
)


class Cifar10Options(ImageSetOptions):
    name: Literal["cifar10"] = "cifar10"
    image_size: ClassVar[int | None] = 32


class Cifar100Options(ImageSetOptions):
    name: Literal["cifar100"] = "cifar100"
    image_size: ClassVar[int | None] = 32


def _folder(layout: CifarLayout, options: ImageSetOptions) -> Path:
    return data_root(options.root) / layout.folder


def _download(layout: CifarLayout, root: Path) -> None:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(tvd, layout.torchvision_class)
    download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)


def check_cifar(layout: CifarLayout, options: ImageSetOptions) -> None:
    """All files there, or fetched now when download is on; else DataUnavailable naming the folder."""
    folder = _folder(layout, options)
    if all((folder / f).is_file() for f in layout.files()):
        return
    if options.download:
        fetch(layout.name, folder.parent, lambda: _download(layout, folder.parent))
        return
    raise missing(layout.name, folder, f"{layout.folder}/ ({', '.join(layout.files())})")


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataUnavailable(f"could not read {path}: {exc}") from None
    # The original files have str keys under latin1; accept bytes keys too.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_batches(folder: Path, files: tuple[str, ...], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images and int64 labels from pickled CIFAR batches."""
    images, labels = [], []
    for name in files:
        entry = _unpickle(folder / name)
        if "data" not in entry or label_key not in entry:
            raise DataUnavailable(f"could not read {folder / name}: expected keys 'data' and '{label_key}'")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar(layout: CifarLayout, options: ImageSetOptions) -> Splits:
    check_cifar(layout, options)
    folder = _folder(layout, options)
    train = read_batches(folder, layout.train_files, layout.label_key)
    test = read_batches(folder, layout.test_files, layout.label_key)
    for labels, files in ((train[1], layout.train_files), (test[1], layout.test_files)):
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < layout.num_classes:
            raise DataUnavailable(f"could not read {folder}/{files[0]}: labels outside 0..{layout.num_classes - 1}")
    classes = [str(c) for c in _unpickle(folder / layout.meta_file).get(layout.names_key, [])]
    if len(classes) != layout.num_classes:
        classes = [str(i) for i in range(layout.num_classes)]
    return assemble(options, train, test, classes, (layout.mean, layout.std), meta={"path": str(folder)})


def check_cifar10(options: Cifar10Options) -> None:
    check_cifar(CIFAR10, options)


def check_cifar100(options: Cifar100Options) -> None:
    check_cifar(CIFAR100, options)


@register_dataset("cifar10", Cifar10Options, check=check_cifar10)
def load_cifar10(options: Cifar10Options, input_kind: str) -> Splits:
    return load_cifar(CIFAR10, options)


@register_dataset("cifar100", Cifar100Options, check=check_cifar100)
def load_cifar100(options: Cifar100Options, input_kind: str) -> Splits:
    return load_cifar(CIFAR100, options)
