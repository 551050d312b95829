"""The `data` suite: images per second of the on-device loader against torchvision's DataLoader.

Both sides serve the same CIFAR-sized synthetic uint8 training set (50,000 x 3 x 32 x 32,
10 classes) with the same augmentation, random crop 32 with padding 4 and horizontal
flip, as normalised float32 batches of the same size; nothing consumes the batches.

- `device_loader`: `bench.data.DeviceLoader`, the data as one uint8 tensor on the
  device (the GPU when there is one, else the CPU), batched augmentation.
- `torchvision_dataloader`: `torch.utils.data.DataLoader(num_workers=2)` over a Dataset
  that does what torchvision's CIFAR10 does per sample: a PIL image from the uint8 array,
  then `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor()`, `Normalize()`.
  Its workers are started (and warmed up by one untimed epoch) before timing.

The two are timed epoch by epoch, alternating, so that both see the same machine load;
figures are medians of the repeats. The on-device loader's RandAugment (m9, n2) and
Mixup/CutMix throughput, and the DataLoader's with torchvision's per-image RandAugment
added, are measured on part of an epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.perf.registry import register_suite
from bench.perf.timing import figure, timed

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10


class PilArrayDataset(torch.utils.data.Dataset):
    """Per-sample path of torchvision.datasets.CIFAR10: uint8 HWC array -> PIL image -> transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Any):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def synthetic_cifar(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return x, y


def torchvision_loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, randaugment: bool = False, workers: int = 2
) -> torch.utils.data.DataLoader:
    import torchvision.transforms as T

    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    if randaugment:
        steps.append(T.RandAugment(num_ops=2, magnitude=9))
    transform = T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])
    dataset = PilArrayDataset(x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy(), transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=True
    )


def device_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, augment: list[str], device: torch.device):
    from bench.data import DeviceLoader, Normalizer

    gen = torch.Generator(device=device).manual_seed(0)
    return DeviceLoader(
        x, y, batch_size, Normalizer(MEAN, STD, device, image=True), augment=augment, generator=gen,
        num_classes=NUM_CLASSES,
    )


def drain(loader: Any, limit: int | None = None) -> int:
    """Iterate (part of) an epoch; the number of images served."""
    served = 0
    for xb, _ in loader:
        served += len(xb)
        if limit is not None and served >= limit:
            break
    return served


@register_suite("data", "training-data throughput: on-device loader vs torchvision DataLoader (2 workers)")
def run_data_suite(quick: bool) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = 2048 if quick else 50_000
    repeats = 1 if quick else 5
    batch = 128
    part = 1024 if quick else 10_240  # images per timed repeat for the slower recipe variants
    x_cpu, y_cpu = synthetic_cifar(n)
    x, y = x_cpu.to(device), y_cpu.to(device)

    ours = device_loader(x, y, batch, ["crop", "flip"], device)
    theirs = torchvision_loader(x_cpu, y_cpu, batch)
    drain(ours, 10 * batch)
    if not quick:
        drain(theirs)  # start the workers and warm them up, untimed
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        ours_s.append(timed(lambda: drain(ours), device))
        theirs_s.append(timed(lambda: drain(theirs), torch.device("cpu")))
    del theirs  # stops its workers

    rows = [
        figure("device_loader crop+flip", ours_s, batch_size=batch, images=n),
        figure("torchvision DataLoader(num_workers=2) crop+flip", theirs_s, batch_size=batch, images=n),
    ]
    big = device_loader(x, y, 512, ["crop", "flip"], device)
    rows.append(figure("device_loader crop+flip, batch 512", [timed(lambda: drain(big), device) for _ in range(repeats)],
                       batch_size=512, images=n))
    variants = {
        "device_loader crop+flip+randaugment(m9,n2)": ["crop", "flip", "randaugment"],
        "device_loader crop+flip+mixup/cutmix": ["crop", "flip", "mixup", "cutmix"],
        "device_loader full recipe (crop, flip, randaugment, mixup/cutmix)": ["crop", "flip", "randaugment", "mixup", "cutmix"],
    }
    for name, augment in variants.items():
        loader = device_loader(x, y, batch, augment, device)
        drain(loader, 2 * batch)
        samples = [timed(lambda: drain(loader, part), device) for _ in range(max(1, repeats - 2))]
        rows.append(figure(name, samples, batch_size=batch, images=min(part, n)))
    theirs_ra = torchvision_loader(x_cpu, y_cpu, batch, randaugment=True)
    drain(theirs_ra, 2 * batch)  # start its workers, untimed
    samples = [timed(lambda: drain(theirs_ra, part), torch.device("cpu")) for _ in range(max(1, repeats - 2))]
    del theirs_ra
    rows.append(figure("torchvision DataLoader(num_workers=2) crop+flip+RandAugment(m9,n2)", samples,
                       batch_size=batch, images=min(part, n)))
    return {
        "rows": rows,
        "ratios": {
            "device_loader / torchvision DataLoader (crop+flip)": rows[0]["median"] / rows[1]["median"],
            "device_loader / torchvision DataLoader (crop+flip+randaugment)": rows[3]["median"] / rows[-1]["median"],
        },
        "settings": {"device": str(device), "dataset": f"synthetic uint8 {n} x 3 x 32 x 32", "batch_size": batch,
                     "repeats": repeats, "timed_unit": "one epoch per repeat (recipe variants: part of one)"},
    }
