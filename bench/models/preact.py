"""Pre-activation ResNet-50 (He et al. 2016, "Identity mappings"), the skeleton AlterNet is built on.

The layout is Park & Kim's (how-do-vits-work, models/preresnet_dnn_block.py and the
AlterNet stem/classifier): BN-ReLU before every conv, a 1x1 shortcut conv (no BN) applied
to the pre-activated input when the shape changes, a stem that is a bare conv (3x3
stride 1 on CIFAR; 7x7 stride 2 + max-pool with `stem='imagenet'`), and a BN-ReLU before
global pooling and the classifier.

Open choice: Park & Kim's stand-alone `preresnet` reuses the post-activation stem
(conv-BN-ReLU) and a plain pooling head; here `preact_resnet50` uses AlterNet's
pre-activation stem and BN-ReLU head, so it is exactly AlterNet-50 with no MSA and
(3, 4, 6, 3) blocks — the clean ablation baseline.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from bench.models.base import BenchModel
from bench.models.layers import DropPath, drop_path_rates
from bench.models.registry import PAPER_PARK, register_model


#: make_block(stage, index, in_planes, planes, stride, drop_path, grid) -> block module.
BlockFactory = Callable[[int, int, int, int, int, float, int], nn.Module]


class PreActBottleneck(nn.Module):
    expansion = 4
    kind = "conv"

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path)
        self.shortcut = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return skip + self.drop_path(out)


class PreActStem(nn.Sequential):
    kind = "stem"


def make_preact_stem(stem: str, in_chans: int, width: int) -> PreActStem:
    """A bare conv: the first block's BN-ReLU pre-activates its output."""
    if stem == "cifar":
        return PreActStem(nn.Conv2d(in_chans, width, 3, 1, 1, bias=False))
    if stem == "imagenet":
        return PreActStem(nn.Conv2d(in_chans, width, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1))
    raise ValueError(f"stem must be 'cifar' or 'imagenet', not {stem!r}")


def stage_grids(img_size: int, stem: str, stages: int) -> list[int]:
    """Feature-map side of each stage: the stem (/1 or /4), then /2 per later stage."""
    grid = img_size if stem == "cifar" else math.ceil(math.ceil(img_size / 2) / 2)
    grids = [grid]
    for _ in range(stages - 1):
        grid = math.ceil(grid / 2)
        grids.append(grid)
    return grids


def conv_block(stage: int, index: int, in_planes: int, planes: int, stride: int, drop_path: float, grid: int) -> nn.Module:
    return PreActBottleneck(in_planes, planes, stride, drop_path)


class PreActResNet(BenchModel):
    """Stages of blocks from `make_block` (bottlenecks by default), widths width * 2^stage * 4."""

    def __init__(self, layers: Sequence[int], num_classes: int, img_size: int = 32, in_chans: int = 3,
                 stem: str = "cifar", width: int = 64, drop_path_rate: float = 0.0,
                 make_block: BlockFactory = conv_block):
        super().__init__()
        self.stem = make_preact_stem(stem, in_chans, width)
        grids = stage_grids(img_size, stem, len(layers))
        rates = iter(drop_path_rates(drop_path_rate, sum(layers)))
        self.stages = nn.ModuleList()
        in_planes = width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(make_block(i, j, in_planes, planes, stride, next(rates), grids[i]))
                in_planes = planes * PreActBottleneck.expansion
            self.stages.append(nn.Sequential(*blocks))
        self.norm = nn.BatchNorm2d(in_planes)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.norm(features))).flatten(1))

    def blocks(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for i, stage in enumerate(self.stages):
            named += [(f"stages.{i}.{j}", b) for j, b in enumerate(stage)]
        return named


@register_model(family="preact_resnet", paper=PAPER_PARK)
def preact_resnet50(num_classes: int, img_size: int = 32, in_chans: int = 3, stem: str = "cifar", width: int = 64,
                    drop_path_rate: float = 0.0) -> PreActResNet:
    """Pre-activation ResNet-50 (3, 4, 6, 3); CIFAR stem by default. AlterNet-50 minus its MSAs and extra block."""
    return PreActResNet((3, 4, 6, 3), num_classes, img_size, in_chans, stem, width, drop_path_rate)
