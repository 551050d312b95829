"""Learning curves and crossovers: the fit against curve_fit, crossover intervals that cover a
planted crossover, parallel curves that report none, the figure, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq, curve_fit

from bench.errors import BenchInputError
from bench.results.curves import fit_power_law, learning_curves, power_law

SIZES = np.array([100.0, 300.0, 1000.0, 3000.0, 10000.0])
#: ResNet-like (flat, higher floor) against ViT-like (steep, lower floor): they cross at n ≈ 414.
CROSSING = {"resnet": (1.0, 0.35, 0.12), "vit": (6.0, 0.6, 0.08)}
TRUE_CROSSOVER = brentq(lambda n: power_law(n, *CROSSING["resnet"]) - power_law(n, *CROSSING["vit"]), 10, 1e6)


def planted(curves: dict[str, tuple[float, float, float]], rng: np.random.Generator, sizes=SIZES, seeds: int = 5,
            noise: float = 0.01) -> pd.DataFrame:
    """A trials table: per model, size and seed, test_acc = 1 - (a·n^(−b) + c + normal noise)."""
    models = np.repeat(list(curves), sizes.size * seeds)
    n = np.tile(np.repeat(sizes, seeds), len(curves))
    error = np.concatenate([np.repeat(power_law(sizes, *p), seeds) for p in curves.values()])
    return pd.DataFrame({"model": models, "n_train": n, "seed": np.tile(np.arange(seeds), sizes.size * len(curves)),
                         "test_acc": 1.0 - (error + rng.normal(0.0, noise, error.size))})


def test_fit_recovers_exact_curves_and_is_never_beaten_by_curve_fit():
    exact = fit_power_law(SIZES, power_law(SIZES, 2.0, 0.5, 0.1))
    assert (float(exact["a"]), float(exact["b"]), float(exact["c"])) == pytest.approx((2.0, 0.5, 0.1), rel=1e-5)
    rng = np.random.default_rng(0)
    noisy = power_law(SIZES, 2.0, 0.5, 0.1) + rng.normal(0, 0.01, (12, SIZES.size))
    ours = fit_power_law(SIZES, noisy)
    for row, sse in zip(noisy, ours["sse"]):
        best = np.inf
        for b0 in (0.05, 0.5, 2.5):
            for c0 in (0.0, 0.2):
                start = [max(1e-6, row[0] - c0) * SIZES[0] ** b0, b0, c0]
                params, _ = curve_fit(lambda n, a, b, c: a * n ** -b + c, SIZES, row, p0=start,
                                      bounds=([0, 1e-3, 0], [np.inf, 3, 1]), maxfev=20000)
                best = min(best, float(np.sum((row - power_law(SIZES, *params)) ** 2)))
        assert sse <= best * (1 + 1e-6)


def test_crossover_interval_covers_a_planted_crossover():
    """Acceptance: the crossover CI contains the planted crossover in >= 90% of replicates and
    `where` says observed (200 replicates, 5 seeds per size, noise sd 0.01, 499 resamples)."""
    rng = np.random.default_rng(2024)
    replicates = [learning_curves(planted(CROSSING, rng), n_boot=499, random_state=r).pairs.iloc[0]
                  for r in range(200)]
    covered = np.mean([p.crossover_lo <= TRUE_CROSSOVER <= p.crossover_hi for p in replicates])
    assert covered >= 0.90
    assert all(p["where"] == "observed" for p in replicates)
    assert all((p.better_below, p.better_above) == ("resnet", "vit") for p in replicates)


@pytest.mark.parametrize("curves", [
    {"a": (1.0, 0.4, 0.10), "b": (1.0, 0.4, 0.13)},  # same a and b, floors 0.03 apart
    {"a": (2.0, 0.4, 0.05), "b": (3.0, 0.4, 0.05)},  # same b and floor, b 1.5 times a
], ids=["offset", "scaled"])
def test_planted_parallel_curves_report_none(curves):
    """Noise can bend parallel curves' fits into a crossing (within 10x of the range in ~40% of
    these replicates); the crossover is claimed only when its interval stays in the window."""
    rng = np.random.default_rng(5)
    where = [learning_curves(planted(curves, rng), n_boot=499, random_state=r).pairs.iloc[0]["where"]
             for r in range(100)]
    assert np.mean(np.array(where) == "none") >= 0.95


def test_extrapolated_crossover_and_tables():
    sizes = np.array([1000.0, 2000.0, 4000.0, 8000.0, 16000.0])  # the planted crossover (414) lies 2.4x below
    curves = learning_curves(planted(CROSSING, np.random.default_rng(1), sizes=sizes, noise=0.002), n_boot=999)
    pair = curves.pairs.iloc[0]
    assert pair["where"] == "extrapolated"
    assert pair.crossover_lo <= TRUE_CROSSOVER <= pair.crossover_hi
    assert list(curves.models.columns[:10]) == ["model", "a", "b", "c", "b_lo", "b_hi", "c_lo", "c_hi", "n_min",
                                                "n_max"]
    assert list(curves.pairs.columns[:6]) == ["model_a", "model_b", "crossover_n", "crossover_lo", "crossover_hi",
                                              "where"]
    vit = curves.models.set_index("model").loc["vit"]
    assert vit.b_lo <= 0.6 <= vit.b_hi and vit.c_lo <= 0.08 <= vit.c_hi
    assert (vit.n_min, vit.n_max, vit.n_boot_failed) == (1000.0, 16000.0, 0)


def test_identical_curves_report_none():
    frame = planted({"a": (1.0, 0.4, 0.1)}, np.random.default_rng(2))
    both = pd.concat([frame, frame.assign(model="b")])
    pair = learning_curves(both, n_boot=199).pairs.iloc[0]
    assert pair["where"] == "none" and "within" in pair.note


def test_loss_metric_is_fitted_as_is():
    rng = np.random.default_rng(3)
    frame = planted({"m": (3.0, 0.5, 1.5)}, rng, noise=0.01)  # a loss: floor 1.5, above 1
    frame["test_loss"] = 1.0 - frame["test_acc"]
    curves = learning_curves(frame, metric="test_loss", n_boot=199)
    assert curves.error_label == "test_loss"
    assert curves.models.iloc[0].c == pytest.approx(1.5, abs=0.05)


def test_figure_is_drawn(tmp_path):
    curves = learning_curves(planted(CROSSING, np.random.default_rng(4)), n_boot=199)
    from bench.results.curve_figure import plot_learning_curves

    figure = plot_learning_curves(curves)
    path = tmp_path / "curves.png"
    figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and len(axes.patches) >= 1  # the crossover's band


@pytest.mark.parametrize("change, message", [
    (lambda f: f[f["n_train"] <= 300],
     "model 'resnet' has 2 size(s) of 'n_train' (100, 300); a fit of a·n^(−b) + c needs at least 3"),
    (lambda f: f.assign(test_acc="high"), "column 'test_acc' is not numeric"),
    (lambda f: f.assign(test_acc=f["test_acc"] * 100), "outside [0, 1]"),
    (lambda f: f.drop(columns="n_train"), "n_train not in the trials"),
    (lambda f: f.assign(n_train=0), "must be positive"),
])
def test_bad_input_is_one_clear_line(change, message):
    frame = change(planted(CROSSING, np.random.default_rng(6)))
    with pytest.raises(BenchInputError) as error:
        learning_curves(frame, n_boot=99)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_confidence_level_outside_0_100_is_bad_input():
    with pytest.raises(BenchInputError, match=r"outside \(0, 100\)"):
        learning_curves(planted(CROSSING, np.random.default_rng(6)), ci=100)
