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
    x, y, _ = sample_patches(n, feature, partition, opts.q, opts.sigma, sample_generator("spatial", seed, 0))
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


def test_large_geometries_are_exact_fast_and_never_overflow() -> None:
    """Summed in log space: D = 1,200 (which overflowed a float before) is a probability, D = 400 takes < 10 ms."""
    import time

    from bench.data import baselines

    spatial_baselines({"name": "spatial", "num_patches": 100, "set_size": 4, "patch_dim": 10})  # imports, warm-up
    times = []
    for _ in range(3):  # the best of three, each computed afresh: this machine's CPUs are shared
        baselines.counting_accuracy.cache_clear()
        baselines.bayes_accuracy.cache_clear()
        started = time.perf_counter()
        d400 = spatial_baselines({"name": "spatial", "num_patches": 400, "set_size": 4, "patch_dim": 10})
        times.append(time.perf_counter() - started)
    assert min(times) < 0.010, f"D = 400 baselines took {min(times) * 1e3:.1f} ms"
    for d in (1200, 100_000):
        exact = spatial_baselines({"name": "spatial", "num_patches": d, "set_size": 4, "patch_dim": 10})
        assert 0.5 < exact["counting"] < exact["bayes"] < d400["bayes"] <= 1.0, (d, exact)
    # Away from the overflow the sum over m agrees with the direct trinomial sum (done here in exact fractions).
    from fractions import Fraction
    from math import comb

    n, c, q = 60 - 4, 4, Fraction(1, 2)
    direct = sum(comb(n, a) * comb(n - a, b) * (q / 2) ** (a + b) * (1 - q) ** (n - a - b)
                 * (1 if c + a - b > 0 else Fraction(1, 2) if c + a - b == 0 else 0)
                 for a in range(n + 1) for b in range(n - a + 1))
    assert counting_accuracy(60, 4, 0.5) == pytest.approx(float(direct), abs=1e-12)


def test_a_baseline_that_cannot_be_computed_is_recorded_empty_with_one_warning(monkeypatch, capsys) -> None:
    from bench.data import baselines
    from bench.spec import parse_sweep
    from bench.store import trial_row

    def broken(*args):
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(baselines, "counting_accuracy", broken)
    monkeypatch.setattr(baselines, "_warned", set())
    trials = parse_sweep({"name": "b", "model": "pa_theory", "grid": {"seed": [0, 1]},
                          "dataset": {"name": "spatial", "num_patches": 40, "set_size": 4, "patch_dim": 10}}).trials
    rows = [trial_row(t, status="ok", result={"test_acc": 0.9, "epochs": 1}) for t in trials]
    assert all(r["baseline_counting"] is None and 0.5 < r["baseline_bayes"] <= 1 for r in rows)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "baseline could not be computed" in line]
    assert len(warnings) == 1 and "D=40" in warnings[0], warnings


@pytest.mark.slow
def test_the_d1200_pa_theory_sweep_records_its_row(ray_local, tmp_path) -> None:
    import yaml

    from bench.cli import main
    from bench.store import ResultStore

    sweep = tmp_path / "d1200.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "d1200", "model": "pa_theory",
        "dataset": {"name": "spatial", "num_patches": 1200, "set_size": 4, "patch_dim": 10,
                    "num_train": 64, "num_test": 64},
        "train_size": 64, "train": {"epochs": 1, "batch_size": "full"},
        "resources": {"cpus_per_trial": 1, "max_failures": 0},
    }))
    assert main(["run", str(sweep), "--results", str(tmp_path / "results")]) == 0
    row = ResultStore(tmp_path / "results", "d1200").read_trials().iloc[0]
    assert row.status == "ok" and 0.5 < row.baseline_counting < row.baseline_bayes < 1
