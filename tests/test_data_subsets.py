"""Training subsets: class-stratified to within one image, seeded, nested; what a trial gets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.data import build_trial_data, nested_order, stratified_subset, subset_size


def unbalanced_labels(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    k = int(torch.randint(2, 12, (1,), generator=gen))
    sizes = torch.randint(1, 80, (k,), generator=gen)
    labels = torch.cat([torch.full((int(s),), 3 * i + 1) for i, s in enumerate(sizes)])  # labels need not be 0..k-1
    return labels[torch.randperm(len(labels), generator=gen)]


@pytest.mark.parametrize("seed", range(40))
def test_every_prefix_is_within_one_image_of_exact_class_balance(seed):
    labels = unbalanced_labels(seed)
    classes, inverse = torch.unique(labels, return_inverse=True)
    order = nested_order(labels, seed)
    assert sorted(order.tolist()) == list(range(len(labels)))  # a permutation of all indices
    counts = F.one_hot(inverse[order], len(classes)).double().cumsum(0)  # row n-1: class counts of the first n
    shares = torch.bincount(inverse).double() / len(labels)
    exact = torch.arange(1, len(labels) + 1).double()[:, None] * shares[None]
    assert (counts - exact).abs().max().item() < 1.0


def test_cifar_sized_balance_at_the_papers_fractions():
    labels = torch.arange(50_000) % 100
    for fraction in (0.02, 0.06, 0.1, 0.5):
        idx = stratified_subset(labels, fraction, seed=0)
        assert len(idx) == round(fraction * 50_000)
        per_class = torch.bincount(labels[idx], minlength=100)
        assert per_class.min() == per_class.max() == len(idx) // 100


def test_subsets_are_nested_for_one_seed():
    labels = unbalanced_labels(123)
    sizes = [0.02, 0.1, 0.25, 40, 0.5, 1.0]
    subsets = [set(stratified_subset(labels, s, seed=7).tolist()) for s in sizes]
    for small, large in zip(subsets, subsets[1:]):
        assert small <= large
    assert subsets[-1] == set(range(len(labels)))


def test_subsets_are_deterministic_per_seed_and_differ_across_seeds():
    labels = torch.arange(1000) % 10
    a = stratified_subset(labels, 0.1, seed=1)
    assert torch.equal(a, stratified_subset(labels.clone(), 0.1, seed=1))
    assert not torch.equal(a, stratified_subset(labels, 0.1, seed=2))
    assert torch.equal(a, a.sort().values)


def test_subset_size_is_a_fraction_or_a_count():
    assert subset_size(0.02, 50_000) == 1000
    assert subset_size(1.0, 50_000) == 50_000
    assert subset_size(1, 50_000) == 50_000  # 1 means the whole set
    assert subset_size(256, 50_000) == 256
    assert subset_size(1e-9, 100) == 1
    with pytest.raises(ValueError, match="larger than the training set"):
        subset_size(101, 100)


def test_trial_data_holds_the_subset_on_the_device_and_records_n_train():
    dataset = {"name": "spatial", "num_train": 500, "num_test": 64}
    data = build_trial_data(dataset, 0.1, seed=3, device="cpu")
    assert data.n_train == 50 and data.train_x.shape == (50, 3, 16, 16)
    assert torch.bincount(data.train_y).tolist() in ([25, 25], [24, 26], [26, 24])
    assert data.meta["partition"] and data.input_kind == "image" and data.img_size == 16 and data.in_chans == 3
    patches = build_trial_data({**dataset, "num_patches": 10, "set_size": 2, "patch_dim": 10}, 128, seed=3, device="cpu", input_kind="patches")
    assert patches.n_train == 128 and patches.input_shape == (10, 10)
    x = patches.normalize(patches.train_x)
    assert torch.equal(x, patches.train_x)  # the patch form is served raw
