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
from bench.data.subsets import nested_order, stratified_subset, subset_size


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
    dataset: dict[str, Any], train_size: float | int, seed: int, device: torch.device | str, input_kind: str = "image",
    val_size: float | int | None = None,
) -> TrialData:
    """Load (cached per process), take the stratified nested subset for `seed`, move to `device`.

    `n_train` of the result is the actual subset size (a fraction is rounded), which the
    trial row records. With `val_size` (a search trial of a tuned sweep) a validation split
    is carved from the training set first and takes the test split's place: selection never
    sees the test set. The split is the same for every seed and size (so every search
    trial of a sweep is scored on the same images), class-stratified, and nested like the
    subsets; the training subset is then taken from the rest (a fraction of the rest; an
    image count, at most all of the rest).
    """
    splits = _cached_splits(json.dumps(dataset, sort_keys=True), input_kind)
    if val_size is None:
        idx = stratified_subset(splits.train_y, train_size, seed)
        eval_x, eval_y = splits.test_x, splits.test_y
    else:
        val_idx, pool = validation_split(splits.train_y, val_size)
        if train_size > 1 and int(train_size) > len(pool):
            train_size = len(pool)  # an image count the split leaves too few for: every image left
        idx = pool[stratified_subset(splits.train_y[pool], train_size, seed)].sort().values
        eval_x, eval_y = splits.train_x[val_idx], splits.train_y[val_idx]
    device = torch.device(device)
    return TrialData(
        train_x=splits.train_x[idx].to(device),
        train_y=splits.train_y[idx].to(device),
        test_x=eval_x.to(device),
        test_y=eval_y.to(device),
        num_classes=splits.num_classes,
        input_kind=input_kind,
        input_shape=tuple(splits.train_x.shape[1:]),
        normalize=Normalizer(splits.mean, splits.std, device, image=input_kind == "image"),
        meta={**splits.meta, **({"validation": len(eval_y)} if val_size is not None else {})},
    )


#: The validation split's own seed: independent of the trial seeds, so it never moves.
VALIDATION_SEED = 104729


def validation_split(labels: torch.Tensor, val_size: float | int) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation indices, the remaining training indices), both sorted."""
    n_val = subset_size(val_size, len(labels))
    if n_val >= len(labels):
        raise ValueError(f"val_size {val_size} leaves no training images (the training set has {len(labels)})")
    order = nested_order(labels, VALIDATION_SEED)
    return order[:n_val].sort().values, order[n_val:].sort().values
