"""The synthetic datasets: Assumption 1 of Jelassi et al. checked statistically, and the control data."""

from __future__ import annotations

import math

import pytest
import torch

from bench.data import load_splits, parse_options
from bench.data.control import load_control, make_teacher, teacher_output
from bench.data.patchgrid import images_to_patches, make_partition, patches_to_images
from bench.data.spatial import make_feature, sample_patches
from bench.errors import BenchInputError

# A patch form with d > D, so that noise statistics are checked in many directions.
PATCHES = {"name": "spatial", "num_patches": 10, "set_size": 2, "patch_dim": 24, "partition": "random",
           "q": 0.3, "sigma": 0.7, "num_train": 6000, "num_test": 50, "feature_seed": 3, "partition_seed": 5}


@pytest.fixture(scope="module")
def drawn():
    """Samples with their signal sets (the generator's own output), for the statistics."""
    options = parse_options(PATCHES)
    feature = make_feature(24, 3)
    partition = make_partition(options)
    x, y, signal = sample_patches(6000, feature, partition, 0.3, 0.7, torch.Generator().manual_seed(0))
    return x.double(), y, signal, feature.double(), partition


def test_feature_is_a_unit_vector_and_partition_covers_the_patches(drawn):
    _, _, _, w, partition = drawn
    assert w.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert sorted(i for s in partition for i in s) == list(range(10))
    assert all(len(s) == 2 for s in partition) and len(partition) == 5


def test_signal_set_carries_y_times_w_on_all_its_patches(drawn):
    x, y, signal, w, partition = drawn
    coef = x @ w  # noise is orthogonal to w*, so this is exactly the coefficient of w*
    sets = torch.tensor(partition)
    on_signal = coef.gather(1, sets[signal])  # (n, C): the patches of each sample's signal set
    assert torch.allclose(on_signal, y[:, None].double().expand_as(on_signal), atol=1e-5)


def test_other_patches_carry_plus_minus_w_at_rate_q_independent_of_y(drawn):
    x, y, signal, w, partition = drawn
    coef = (x @ w).round()
    assert torch.allclose(x @ w, coef, atol=1e-5)  # coefficients are exactly -1, 0 or +1
    set_of_patch = torch.empty(10, dtype=torch.long)
    for i, s in enumerate(partition):
        set_of_patch[s] = i
    off = set_of_patch[None, :] != signal[:, None]
    spurious = coef[off]
    n = spurious.numel()
    tol = 5 * math.sqrt(0.15 * 0.85 / n)
    assert (spurious == 1).double().mean().item() == pytest.approx(0.15, abs=tol)
    assert (spurious == -1).double().mean().item() == pytest.approx(0.15, abs=tol)
    # independent of the label: the mean spurious sign is ~0 for both labels
    ys = y[:, None].expand_as(coef)[off]
    for label in (-1, 1):
        part = spurious[ys == label]
        assert abs(part.mean().item()) < 5 * math.sqrt(0.3 / part.numel())


def test_noise_is_orthogonal_to_w_with_variance_sigma_squared_per_direction(drawn):
    x, _, _, w, _ = drawn
    noise = (x - (x @ w)[..., None] * w).reshape(-1, 24)
    # Exactly orthogonal to w*, by construction
    assert (x @ w - (x @ w).round()).abs().max().item() < 1e-5
    cov = noise.T @ noise / len(noise)
    expected = 0.49 * (torch.eye(24, dtype=torch.float64) - torch.outer(w, w))
    # 60k noise vectors: the entries of the covariance estimate are within ~0.004 of the truth
    assert (cov - expected).abs().max().item() < 0.03
    assert noise.mean(dim=0).abs().max().item() < 0.03
    eig = torch.linalg.eigvalsh(cov)
    assert eig[0].item() < 1e-6  # the w* direction carries no noise
    assert eig[1:].min().item() > 0.49 * 0.9 and eig.max().item() < 0.49 * 1.1


def test_labels_and_signal_sets_are_uniform(drawn):
    _, y, signal, _, _ = drawn
    assert (y == 1).double().mean().item() == pytest.approx(0.5, abs=0.035)
    counts = torch.bincount(signal, minlength=5).double() / len(signal)
    assert counts.sub(0.2).abs().max().item() < 0.03


def test_served_data_labels_are_the_sign_filling_a_whole_set():
    splits = load_splits(PATCHES, "patches")
    w = torch.tensor(splits.meta["feature"], dtype=torch.float64)
    coef = (splits.train_x.double() @ w).round()
    sets = torch.tensor(splits.meta["partition"])
    sign = (splits.train_y * 2 - 1).double()
    filled = (coef[:, sets] == sign[:, None, None]).all(dim=2).any(dim=1)
    assert filled.all()
    assert splits.train_x.shape == (6000, 10, 24) and splits.num_classes == 2
    assert splits.meta["D"] == 10 and splits.meta["L"] == 5 and splits.meta["C"] == 2 and splits.meta["d"] == 24
    assert splits.mean == (0.0,) and splits.std == (1.0,)  # the patch form is served raw


def test_same_seeds_same_data_and_other_sample_seed_other_data():
    a = load_splits(PATCHES, "patches")
    b = load_splits(dict(PATCHES), "patches")
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = load_splits({**PATCHES, "sample_seed": 1}, "patches")
    assert not torch.equal(a.train_x, c.train_x)
    assert c.meta["partition"] == a.meta["partition"] and c.meta["feature"] == a.meta["feature"]


def test_new_feature_seed_keeps_the_partition_and_draws_a_new_feature():
    a = load_splits(PATCHES, "patches")
    b = load_splits({**PATCHES, "feature_seed": 4}, "patches")
    assert a.meta["partition"] == b.meta["partition"]
    wa, wb = torch.tensor(a.meta["feature"]), torch.tensor(b.meta["feature"])
    assert abs(torch.dot(wa, wb).item()) < 0.9
    assert not torch.equal(a.train_y, b.train_y)  # samples are independent of the source's
    c = load_splits({**PATCHES, "partition_seed": 6}, "patches")
    assert c.meta["partition"] != a.meta["partition"]


def test_image_form_is_the_patch_grid():
    options = {"name": "spatial", "grid": 3, "patch_size": 2, "channels": 3, "set_size": 1, "num_train": 64, "num_test": 8}
    img = load_splits(options, "image")
    pat = load_splits(options, "patches")
    assert img.train_x.shape == (64, 3, 6, 6) and pat.train_x.shape == (64, 9, 12)
    assert torch.equal(images_to_patches(img.train_x, 2), pat.train_x)
    assert torch.equal(patches_to_images(pat.train_x, 3, 2, 3), img.train_x)
    # the image form is standardised isotropically: one mean and std for every channel
    assert len(set(img.std)) == 1 and img.std[0] == pytest.approx(img.train_x.double().std().item())


def test_blocks_partition_is_b_by_b_squares():
    partition = make_partition(parse_options({"name": "spatial", "grid": 6, "set_size": 4}))
    assert len(partition) == 9
    for s in partition:
        rows = {j // 6 for j in s}
        cols = {j % 6 for j in s}
        assert len(rows) == 2 and len(cols) == 2 and max(rows) - min(rows) == 1 and max(cols) - min(cols) == 1 and min(rows) % 2 == 0
    runs = make_partition(parse_options({"name": "spatial", "num_patches": 10, "set_size": 2}))
    assert runs == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_bad_layouts_are_input_errors():
    with pytest.raises(BenchInputError, match="set_size"):
        parse_options({"name": "spatial", "grid": 4, "set_size": 3})
    with pytest.raises(BenchInputError, match="blocks"):
        parse_options({"name": "spatial", "grid": 4, "set_size": 2})
    with pytest.raises(BenchInputError, match="unknown option"):
        parse_options({"name": "spatial", "sigmaa": 1.0})
    with pytest.raises(BenchInputError, match="num_patches"):
        load_splits({"name": "spatial", "num_patches": 10, "set_size": 2}, "image")
    with pytest.raises(BenchInputError, match="patch_dim"):
        load_splits({"name": "spatial", "patch_dim": 10}, "image")


def test_control_data_is_gaussian_and_labelled_by_the_cubic_cnn():
    options = {"name": "spatial_control", "num_train": 4000, "num_test": 100, "hidden": 3, "teacher_seed": 2}
    splits = load_splits(options, "patches")
    x = splits.train_x
    assert x.shape == (4000, 16, 48)
    assert abs(x.mean().item()) < 0.01 and x.var().item() == pytest.approx(1.0, abs=0.02)
    filters, signs = make_teacher(3, 4, 48, 2)
    expected = (teacher_output(x, splits.meta["partition"], filters, signs) > 0).long()
    assert torch.equal(splits.train_y, expected)
    assert splits.train_y.float().mean().item() == pytest.approx(0.5, abs=0.04)
    img = load_control(parse_options(options), "image")
    assert img.train_x.shape == (4000, 3, 16, 16) and torch.equal(img.train_y, splits.train_y)
    assert torch.equal(images_to_patches(img.train_x, 4), x)


def test_control_label_depends_only_on_the_sets():
    # Moving whole sets around (a permutation of the sets) keeps f: the CNN sums over sets.
    options = parse_options({"name": "spatial_control", "grid": 4, "set_size": 4})
    partition = make_partition(options)
    filters, signs = make_teacher(2, 4, 48, 0)
    x = torch.randn(200, 16, 48, generator=torch.Generator().manual_seed(1))
    moved = x.clone()
    order = [1, 2, 3, 0]
    for dst, src in enumerate(order):
        moved[:, partition[dst]] = x[:, partition[src]]
    assert torch.allclose(teacher_output(x, partition, filters, signs), teacher_output(moved, partition, filters, signs), rtol=1e-4, atol=1e-4)
