"""Figures of `bench results plot` that must stay readable on what a small run produces: a few
eigenvalues of very different scales, a sweep with a single training-set size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.analysis.hessian import plot_hessian, symlog_threshold
from bench.plots import plot_scaling


def hessian_frame(spectra: dict[str, list[float]]) -> pd.DataFrame:
    out = []
    for model, values in spectra.items():
        out += [{"trial_id": f"{model}-0", "model": model, "analysis": "hessian", "epoch": 5, "metric": "eigenvalue",
                 "layer": None, "index": i, "value": v} for i, v in enumerate(values)]
        out.append({"trial_id": f"{model}-0", "model": model, "analysis": "hessian", "epoch": 5,
                    "metric": "converged_share", "layer": None, "index": None, "value": 1.0})
    return pd.DataFrame(out)


def test_hessian_figure_shows_every_eigenvalue_when_models_differ_by_orders_of_magnitude():
    # The bug this guards against: one linear axis and a log-density histogram drew a ResNet's
    # eigenvalues of ~1e3 and a ViT's small negative ones as indistinguishable bars at 0.
    spectra = {"resnet18": [1200.0, 400.0, 350.0, 90.0], "vit_ti": [-12.0, 8.0, -3.0, 2.5, -1.0]}
    fig = plot_hessian(hessian_frame(spectra))
    strip, cdf = fig.axes[:2]
    assert strip.get_xscale() == "symlog" and cdf.get_xscale() == "symlog"
    lo, hi = strip.get_xlim()
    for collection, (model, values) in zip(strip.collections, sorted(spectra.items())):
        x = np.sort(collection.get_offsets()[:, 0])
        assert x.tolist() == sorted(values)  # every eigenvalue is a dot of its model's row
        assert lo < x.min() and x.max() < hi
    # The cumulative share just below 0 is the NEP, and the legend says so.
    vit_line = [line for line in cdf.get_lines() if line.get_label().startswith("vit_ti")][0]
    xs, ys = vit_line.get_xdata(), vit_line.get_ydata()
    assert ys[np.flatnonzero(xs < 0)[-1]] == pytest.approx(3 / 5)
    assert "NEP 0.60" in vit_line.get_label() and "100% converged" in vit_line.get_label()


def test_symlog_only_when_magnitudes_differ():
    assert symlog_threshold([1.0, 2.0, -3.0]) is None
    assert symlog_threshold([1000.0, -2.0]) == pytest.approx(1.0)
    assert symlog_threshold([1e5, 1e-3]) == pytest.approx(10.0)  # the linear range stays a small part of the axis
    assert symlog_threshold([]) is None


def test_scaling_figure_with_one_training_set_size_draws_a_bar_per_model():
    # Before: lone dots on a "training images" axis spanning 1380..1520 (one size, nothing to scale over).
    trials = pd.DataFrame([{"trial_id": f"{m}-{s}", "model": m, "train_size": 1.0, "n_train": 1442, "seed": s,
                            "test_acc": acc + 0.01 * s, "test_loss": 1.0 - acc} for m, acc in (("vit_ti", 0.8),
                                                                                          ("resnet18", 0.95))
                           for s in (0, 1)])
    fig = plot_scaling(trials)
    acc_ax, nll_ax = fig.axes[:2]
    assert [t.get_text() for t in acc_ax.get_xticklabels()] == ["resnet18", "vit_ti"]
    heights = [patch.get_height() for patch in acc_ax.patches]
    assert heights == pytest.approx([95.5, 80.5])
    assert "1,442 training images" in acc_ax.get_title()
    assert [t.get_text() for t in nll_ax.get_xticklabels()] == ["resnet18", "vit_ti"]


def test_hessian_figure_draws_each_analysed_epoch_of_a_model_as_its_own_row():
    # `hessian: {at: [warmup_end, end]}` gives two spectra per trial; one row (and curve) each, the
    # earlier one dashed, instead of silently dropping all but the last epoch.
    early = hessian_frame({"vit_ti": [-30.0, 20.0, -5.0]}).assign(epoch=2)
    late = hessian_frame({"vit_ti": [60.0, 40.0, 10.0], "resnet18": [500.0, 200.0, 90.0]})
    fig = plot_hessian(pd.concat([early, late], ignore_index=True))
    strip, cdf = fig.axes[:2]
    assert [t.get_text() for t in strip.get_yticklabels()] == ["resnet18, epoch 5", "vit_ti, epoch 2",
                                                               "vit_ti, epoch 5"]
    lines = {line.get_label().split(":")[0]: line for line in cdf.get_lines() if "NEP" in line.get_label()}
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 3  # one entry per row, below the panels
    assert lines["vit_ti, epoch 2"].get_linestyle() == "--" and lines["vit_ti, epoch 5"].get_linestyle() == "-"
    assert "NEP 0.67" in [line.get_label() for line in cdf.get_lines() if line.get_label().startswith("vit_ti, epoch 2")][0]


def test_noise_and_variance_legends_sit_outside_the_axes():
    # Inside, the legend covered the AlterNet curve of the digits run (docs/ANALYSIS.md).
    from bench.analysis.noise import plot_noise
    from bench.analysis.variance import plot_variance

    rows = []
    for model in ("alternet50", "resnet18", "vit_ti"):
        tid = f"{model}-0"
        for j in range(9):
            rows += [{"trial_id": tid, "model": model, "analysis": "noise", "epoch": 5, "metric": "acc_drop",
                      "layer": "band", "index": j, "value": 0.1 * j},
                     {"trial_id": tid, "model": model, "analysis": "noise", "epoch": 5, "metric": "band_frequency",
                      "layer": "band", "index": j, "value": round(0.1 * (j + 1), 1)}]
        for i in range(3):
            rows += [{"trial_id": tid, "model": model, "analysis": "variance", "epoch": 5, "metric": metric,
                      "layer": f"b{i}", "index": i, "value": value}
                     for metric, value in (("variance", 1.0 + i), ("depth", i / 2), ("kind", 1))]
    frame = pd.DataFrame(rows)
    for fig in (plot_noise(frame[frame["analysis"] == "noise"]), plot_variance(frame[frame["analysis"] == "variance"])):
        assert fig.axes[0].get_legend() is None and len(fig.legends) == 1
        assert [t.get_text() for t in fig.legends[0].get_texts()][:1] == ["alternet50"]

