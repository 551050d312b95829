"""ResNets (post-activation, He et al. 2016) with a CIFAR stem (3x3 conv, stride 1, no max-pool) by default.

`stem='imagenet'` gives the 7x7 stride-2 conv and max-pool of the original; the stem that
ran is part of the trial's model_args and so of its record. `resnet50` is torchvision's
layout (v1.5: stride on the 3x3 conv), Park & Kim's CIFAR ResNet-50 (23.71M params with
100 classes).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.models.base import BenchModel
from bench.models.layers import DropPath, drop_path_rates
from bench.models.registry import PAPER_PARK, register_model



class BasicBlock(nn.Module):
    expansion = 1
    kind = "conv"

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 down, 3x3 (carries the stride), 1x1 up to 4x the width."""

    expansion = 4
    kind = "conv"

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + self.shortcut(x))


class Stem(nn.Sequential):
    kind = "stem"


def make_stem(stem: str, in_chans: int, width: int) -> Stem:
    if stem == "cifar":
        return Stem(nn.Conv2d(in_chans, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    if stem == "imagenet":
        return Stem(
            nn.Conv2d(in_chans, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
    raise ValueError(f"stem must be 'cifar' or 'imagenet', not {stem!r}")


class ResNet(BenchModel):
    def __init__(self, block: type[nn.Module], layers: tuple[int, ...], num_classes: int, in_chans: int = 3,
                 stem: str = "cifar", width: int = 64, drop_path_rate: float = 0.0):
        super().__init__()
        self.stem = make_stem(stem, in_chans, width)
        self.stages = nn.ModuleList()
        rates = iter(drop_path_rates(drop_path_rate, sum(layers)))
        in_planes = width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1, drop_path=next(rates)))
                in_planes = planes * block.expansion
            self.stages.append(nn.Sequential(*blocks))
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
        return self.fc(self.pool(features).flatten(1))

    def blocks(self) -> list[tuple[str, nn.Module]]:
        named: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for i, stage in enumerate(self.stages):
            named += [(f"stages.{i}.{j}", b) for j, b in enumerate(stage)]
        return named


@register_model(family="resnet", paper=PAPER_PARK)
def resnet18(num_classes: int, img_size: int = 32, in_chans: int = 3, stem: str = "cifar", width: int = 64,
             drop_path_rate: float = 0.0) -> ResNet:
    """ResNet-18; CIFAR stem by default (11.22M params with 100 classes, 1.11 GFLOPs at 32 px)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_chans, stem, width, drop_path_rate)


@register_model(family="resnet", paper=PAPER_PARK)
def resnet50(num_classes: int, img_size: int = 32, in_chans: int = 3, stem: str = "cifar", width: int = 64,
             drop_path_rate: float = 0.0) -> ResNet:
    """ResNet-50 (3, 4, 6, 3 bottlenecks); CIFAR stem by default: Park & Kim's 23.71M params (100 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, stem, width, drop_path_rate)
