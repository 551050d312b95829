"""A test-only model that fails on purpose, to exercise real retries in real Ray workers.

Registered in the driver by importing this module, and in every Ray worker through
`worker_process_setup_hook` (see conftest.py), so the orchestration code under test is
the production code, unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from bench.models import BenchModel, register_model


class FlakyNet(BenchModel):
    """A linear classifier that raises in training after `fail_after` forward passes.

    It fails while the marker file holds fewer than `fail_times` failures: each failure
    appends a line, so a retried trial (a new process) sees the earlier failures.
    """

    def __init__(self, num_classes: int, img_size: int, in_chans: int, marker: str, fail_times: int, fail_after: int,
                 sleep_s: float = 0.0, nan_after: int = 0, oom: bool = False):
        super().__init__()
        self.fc = nn.Linear(in_chans * img_size * img_size, num_classes)
        self.marker, self.fail_times, self.fail_after = Path(marker), fail_times, fail_after
        self.sleep_s, self.nan_after, self.oom = sleep_s, nan_after, oom
        self.calls = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps = getattr(self, "steps", 0) + 1
            if self.sleep_s:  # a slow trial, to be interrupted in the middle
                time.sleep(self.sleep_s)
            if self.oom:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (flaky_net: planned)")
            if self.nan_after and self.steps > self.nan_after:  # a diverging trial
                return x.flatten(1) * float("nan")
        if self.training and self.marker.name:
            self.calls += 1
            failures = len(self.marker.read_text().splitlines()) if self.marker.exists() else 0
            if self.calls > self.fail_after and failures < self.fail_times:
                with self.marker.open("a") as f:
                    f.write("failed\n")
                raise RuntimeError(f"flaky_net: planned failure {failures + 1} of {self.fail_times}")
        return x.flatten(1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [("fc", self.fc)]


@register_model(family="test")
def flaky_net(num_classes: int, img_size: int = 32, in_chans: int = 3, marker: str = "", fail_times: int = 1,
              fail_after: int = 0, sleep_s: float = 0.0, nan_after: int = 0, oom: bool = False) -> FlakyNet:
    return FlakyNet(num_classes, img_size, in_chans, marker, fail_times, fail_after, sleep_s, nan_after, oom)


def register() -> None:
    """Ray worker_process_setup_hook: importing this module registered the model."""
