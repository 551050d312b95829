"""What one trial gets from the data module: its subset, on its device, ready to batch.

Real image datasets arrive as uint8 and stay uint8 on the device (the test split too;
`normalize` turns batches into float32); synthetic data is float. `meta` carries what the
analyses need from the dataset, e.g. the ground-truth partition of the spatial data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from bench.data.loader import Normalizer
from bench.data.registry import Splits, load_splits
from bench.data.subsets import stratified_subset


@dataclass
class TrialData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_kind: str
    input_shape: tuple[int, ...]  # one sample, no batch dim
    normalize: Normalizer
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.train_x)

    @property
    def img_size(self) -> int:
        return self.input_shape[-1]

    @property
    def in_chans(self) -> int:
        return self.input_shape[0]


@lru_cache(maxsize=4)
def _cached_splits(key: str, input_kind: str) -> Splits:
    return load_splits(json.loads(key), input_kind)


def build_trial_data(
    dataset: dict[str, Any], train_size: float | int, seed: int, device: torch.device | str, input_kind: str = "image"
) -> TrialData:
    """Load (cached per process), take the stratified nested subset for `seed`, move to `device`.

    `n_train` of the result is the actual subset size (a fraction is rounded), which the
    trial row records.
    """
    splits = _cached_splits(json.dumps(dataset, sort_keys=True), input_kind)
    idx = stratified_subset(splits.train_y, train_size, seed)
    device = torch.device(device)
    return TrialData(
        train_x=splits.train_x[idx].to(device),
        train_y=splits.train_y[idx].to(device),
        test_x=splits.test_x.to(device),
        test_y=splits.test_y.to(device),
        num_classes=splits.num_classes,
        input_kind=input_kind,
        input_shape=tuple(splits.train_x.shape[1:]),
        normalize=Normalizer(splits.mean, splits.std, device, image=input_kind == "image"),
        meta=splits.meta,
    )
