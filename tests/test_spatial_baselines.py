"""The closed-form counting and Bayes accuracies of the spatial data agree with the same rules
applied to generated samples, and they reach the trials table."""

from __future__ import annotations

import pytest
import torch

from bench.data import spatial_baselines
from bench.data.baselines import bayes_accuracy, counting_accuracy
from bench.data.patchgrid import make_partition, sample_generator, set_index_of_patch
from bench.data.registry import parse_options
from bench.data.spatial import make_feature, sample_patches

MC_SAMPLES = 200_000


def rule_accuracies(options: dict, n: int = MC_SAMPLES, seed: int = 5) -> tuple[float, float]:
    """Counting and Bayes rules applied to n generated samples (ties count one half)."""
    opts = parse_options(options)
    feature = make_feature(opts.patch_dim_for("patches"), opts.feature_seed)
    partition = make_partition(opts)
    x, y, _ = sample_patches(n, feature, partition, opts.q, opts.sigma, sample_generator(seed, 0))
    coef = (x.double() @ feature.double()).round()  # the noise is orthogonal to w*: exact coefficients
    set_of = set_index_of_patch(partition)
    counting = coef.sum(dim=1)
    full_plus = torch.zeros(n, len(partition))
    full_minus = torch.zeros(n, len(partition))
    for index in range(len(partition)):
        members = coef[:, set_of == index]
        full_plus[:, index] = (members == 1).all(dim=1).double()
        full_minus[:, index] = (members == -1).all(dim=1).double()
    bayes = full_plus.sum(dim=1) - full_minus.sum(dim=1)

    def accuracy(score: torch.Tensor) -> float:
        return float(((torch.sign(score) == y).double() + 0.5 * (score == 0).double()).mean())

    return accuracy(counting), accuracy(bayes)


@pytest.mark.parametrize(
    "options",
    [
        {"name": "spatial"},  # 4x4 grid, sets of 4 (2x2 blocks), q = 0.5
        {"name": "spatial", "num_patches": 10, "patch_dim": 10, "set_size": 2, "partition": "random"},
        {"name": "spatial", "num_patches": 36, "patch_dim": 8, "set_size": 4, "partition": "random"},
        {"name": "spatial", "grid": 4, "set_size": 4, "q": 0.9},
    ],
    ids=["default", "paper-D10", "D36-C4", "q0.9"],
)
def test_closed_forms_match_monte_carlo_of_the_same_rules(options: dict) -> None:
    exact = spatial_baselines(options)
    counting, bayes = rule_accuracies(options)
    assert abs(exact["counting"] - counting) < 0.005, (exact, counting)
    assert abs(exact["bayes"] - bayes) < 0.005, (exact, bayes)
    assert exact["chance"] == 0.5 and exact["counting"] < exact["bayes"]


def test_the_issue_figures() -> None:
    """The configurations the spatial-structure issue quotes, to the digit it gives."""
    quoted = {(16, 4): (94.6, 99.4), (10, 2): (83.4, 89.6), (36, 4): (84.0, 98.5)}  # q = 0.5
    for (d, c), (counting, bayes) in quoted.items():
        assert counting_accuracy(d, c, 0.5) * 100 == pytest.approx(counting, abs=0.06)
        assert bayes_accuracy(d, c, 0.5) * 100 == pytest.approx(bayes, abs=0.06)


def test_edge_cases() -> None:
    assert counting_accuracy(8, 2, 0.0) == 1.0 and bayes_accuracy(8, 2, 0.0) == 1.0  # no spurious patches
    assert bayes_accuracy(4, 4, 0.5) == 1.0  # one set: the signal fills the image
    assert spatial_baselines({"name": "spatial_control"}) is None
    assert spatial_baselines({"name": "cifar10"}) is None
