"""Class-stratified, seeded, nested training subsets.

Every training sample gets a place in one global order: within its class a seeded
random rank r, and across classes the key (r + 0.5) / n_class (the sample's quantile in
its class). A subset of n images is the first n of that order. So for one seed a smaller
subset is always inside a larger one, and every class holds its share of the subset to
within one image.
"""

from __future__ import annotations

import torch


def subset_size(train_size: float | int, n_total: int) -> int:
    """A fraction (<= 1.0) of the set, or an image count (> 1)."""
    if train_size <= 1:
        return max(1, round(float(train_size) * n_total))
    n = int(train_size)
    if n > n_total:
        raise ValueError(f"train_size {n} is larger than the training set ({n_total} images)")
    return n


def nested_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """All training indices in the order subsets take them (stratified, seeded)."""
    labels = labels.cpu()
    gen = torch.Generator().manual_seed(int(seed))
    keys = torch.empty(len(labels), dtype=torch.float64)
    for cls in labels.unique():
        idx = (labels == cls).nonzero().flatten()
        ranks = torch.randperm(len(idx), generator=gen).double()
        keys[idx] = (ranks + 0.5) / len(idx)
    # Equal keys (same quantile in classes of equal size) are ordered by a seeded shuffle:
    # shuffle first, then a stable sort on the key.
    shuffled = torch.randperm(len(labels), generator=gen)
    return shuffled[torch.argsort(keys[shuffled], stable=True)]


def stratified_subset(labels: torch.Tensor, train_size: float | int, seed: int) -> torch.Tensor:
    """Indices of the class-stratified subset of `train_size` images for `seed`, sorted."""
    n = subset_size(train_size, len(labels))
    return nested_order(labels, seed)[:n].sort().values
