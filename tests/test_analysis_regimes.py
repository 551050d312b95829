"""The data-regime summary (bench.analysis.regimes) on trials and eigenvalues whose answers are known."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.analysis.regimes import paired_gaps, plot_hessian_regimes, plot_regimes, regime_summary, to_markdown


def trial(tid: str, model: str, n: int, seed: int, budget, acc: float, lr: float = 1e-3) -> dict:
    config = {"train": {"budget": budget, "lr": lr}, "recorded": {"total_steps": budget["steps"] if budget else n // 10}}
    return {"trial_id": tid, "model": model, "n_train": n, "seed": seed, "status": "ok", "phase": "final",
            "finished_at": pd.Timestamp("2026-01-01", tz="UTC"), "config": json.dumps(config), "test_acc": acc,
            "test_loss": 1 - acc, "train_loss": 0.5, "ece": 0.1}


def frames():
    rows, eig = [], []
    for budget in (None, {"steps": 50}):
        for n in (100, 1000):
            for seed in range(3):
                cnn, vit = 0.9 + 0.01 * seed, 0.6 + 0.2 * (n == 1000) + 0.01 * seed
                rows += [trial(f"c{n}{seed}{bool(budget)}", "resnet18", n, seed, budget, cnn),
                         trial(f"v{n}{seed}{bool(budget)}", "vit_ti", n, seed, budget, vit)]
                for tid, values_warm, values_end in ((f"v{n}{seed}{bool(budget)}", [-1.0, 2.0], [3.0, 5.0]),
                                                     (f"c{n}{seed}{bool(budget)}", [1.0, 2.0], [1.0, 1.0])):
                    eig += [{"trial_id": tid, "analysis": "hessian", "metric": "eigenvalue", "epoch": 2, "index": i,
                             "layer": None, "value": v} for i, v in enumerate(values_warm)]
                    eig += [{"trial_id": tid, "analysis": "hessian", "metric": "eigenvalue", "epoch": 9, "index": i,
                             "layer": None, "value": v} for i, v in enumerate(values_end)]
    return pd.DataFrame(rows), pd.DataFrame(eig)


def test_summary_means_spread_rules_and_hessian_points():
    trials, analysis = frames()
    summary = regime_summary(trials, analysis).set_index(["rule", "model", "n_train"])
    assert set(summary.index.get_level_values("rule")) == {"epochs", "steps 50"}
    vit = summary.loc[("epochs", "vit_ti", 100)]
    assert vit["test_acc_mean"] == pytest.approx(0.61) and vit["test_acc_std"] == pytest.approx(0.01)
    assert vit["seeds"] == 3 and vit["nep_warmup"] == 0.5 and vit["nep_end"] == 0.0 and vit["ape_end"] == 4.0
    assert vit["eigenvalues_warmup"] == 6 and vit["nep_warmup_seed_std"] == 0.0
    assert summary.loc[("steps 50", "resnet18", 1000), "steps"] == 50
    assert "| epochs | vit_ti | 100 |" in to_markdown(summary.reset_index())


def test_paired_gap_is_per_seed():
    trials, _ = frames()
    gaps = paired_gaps(trials, "vit_ti", "resnet18").set_index(["rule", "n_train"])
    assert gaps.loc[("epochs", 100), "mean"] == pytest.approx(-0.3) and gaps.loc[("epochs", 100), "std"] == pytest.approx(0)
    assert gaps.loc[("steps 50", 1000), "mean"] == pytest.approx(-0.1) and gaps.loc[("epochs", 100), "count"] == 3


def test_figures_have_a_panel_per_rule_and_metric():
    trials, analysis = frames()
    summary = regime_summary(trials, analysis)
    assert len(plot_regimes(summary).axes) == 6 and len(plot_hessian_regimes(summary).axes) == 2
