"""Class-stratified, seeded, nested training subsets.

Every training sample gets a place in one global order, and a subset of n images is the
first n of it; so for one seed a smaller subset is always inside a larger one (the 2%
subset of CIFAR-100 lies inside the 10% one). The order interleaves the classes so that
every prefix holds each class within one image of its exact share: for all n and every
class c, |count_c(n) - n * n_c / N| < 1 (a class with an integer share gets exactly it).

How: the j-th image of class c must appear in the window of positions
[floor((j-1) N / n_c) + 1, ceil(j N / n_c)] for that bound to hold; earliest-deadline-
first scheduling fills the N positions within all windows (this is the "chairman
assignment" problem, feasible by Tijdeman 1980, and EDF is optimal for unit tasks with
release times and deadlines). Ties go by a seeded random priority of the classes. Which images of a class
come first is a seeded random permutation of the class.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

from bench.data.streams import stream_seed


def subset_size(train_size: float | int, n_total: int) -> int:
    """A fraction (<= 1.0) of the set, or an image count (> 1)."""
    if train_size <= 1:
        return max(1, round(float(train_size) * n_total))
    n = int(train_size)
    if n > n_total:
        raise ValueError(f"train_size {n} is larger than the training set ({n_total} images)")
    return n


def _class_sequence(counts: list[int], tiebreak: list[float]) -> list[int]:
    """Which class fills each of the N positions, every class within one of its share at every prefix."""
    total = sum(counts)
    taken = [0] * len(counts)
    ready: list[tuple[int, float, int]] = []  # (deadline, tie-break, class) of released next images
    waiting = [(1, c) for c, n_c in enumerate(counts) if n_c]  # (release, class); all first images at 1
    heapq.heapify(waiting)
    sequence = []
    for t in range(1, total + 1):
        while waiting and waiting[0][0] <= t:
            _, c = heapq.heappop(waiting)
            heapq.heappush(ready, (-(-(taken[c] + 1) * total // counts[c]), tiebreak[c], c))
        deadline, _, c = heapq.heappop(ready)
        if deadline < t:  # cannot happen (the windows are feasible); guard against a silent imbalance
            raise AssertionError("stratified order missed a deadline")
        sequence.append(c)
        taken[c] += 1
        if taken[c] < counts[c]:
            heapq.heappush(waiting, (taken[c] * total // counts[c] + 1, c))
    return sequence


def nested_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """All training indices in the order subsets take them (stratified, seeded)."""
    labels_np = labels.cpu().numpy()
    rng = np.random.default_rng(stream_seed("subset", int(seed)))  # its own stream (bench.data.streams)
    _, inverse, counts = np.unique(labels_np, return_inverse=True, return_counts=True)
    by_class = np.argsort(inverse, kind="stable")  # indices grouped by class, classes in sorted order
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    members = np.concatenate([rng.permutation(by_class[s : s + n]) for s, n in zip(starts, counts)])
    sequence = np.asarray(_class_sequence(counts.tolist(), rng.random(len(counts)).tolist()))
    order = np.empty(len(labels_np), dtype=np.int64)
    order[np.argsort(sequence, kind="stable")] = members  # the j-th slot of class k gets its j-th member
    return torch.from_numpy(order)


def stratified_subset(labels: torch.Tensor, train_size: float | int, seed: int) -> torch.Tensor:
    """Indices of the class-stratified subset of `train_size` images for `seed`, sorted."""
    n = subset_size(train_size, len(labels))
    return nested_order(labels, seed)[:n].sort().values
