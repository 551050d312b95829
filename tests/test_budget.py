"""Training budgets (train.budget): equal optimizer steps across training-set sizes, next to the
default equal epochs; the schedule follows the budget; old trial ids are unchanged."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from bench.spec import HASH_REFERENCE_TRAIN, parse_sweep
from bench.train import lr_factor, run_trial, training_plan

TINY = {
    "name": "budget",
    "model": "vit_ti",
    "model_args": {"patch_size": 4, "dim": 16, "depth": 1, "heads": 2},
    "dataset": {"name": "spatial", "num_train": 256, "num_test": 64},
    "train": {"epochs": 2, "batch_size": 32, "lr": 3e-3, "warmup_epochs": 1},
    "resources": {"cpus_per_trial": 1, "max_failures": 0},
}


def test_plan_without_budget_is_equal_epochs_as_before():
    train = {"epochs": 10, "warmup_epochs": 1.5, "budget": None}
    plan = training_plan(train, steps_per_epoch=7)
    assert (plan.epochs, plan.total_steps, plan.warmup_steps) == (10, 70, 10)  # int(1.5 * 7), as before


def test_steps_budget_sets_epochs_warmup_share_and_schedule():
    """N steps on any subset: ceil(N / steps per epoch) epochs; warmup keeps warmup_epochs / epochs of
    training; the cosine reaches 0 at step N, not at epochs x steps per epoch."""
    train = {"epochs": 15, "warmup_epochs": 2, "budget": {"steps": 690}, "schedule": "cosine"}
    small, large = training_plan(train, 4), training_plan(train, 46)
    assert (small.epochs, small.total_steps, small.warmup_steps) == (173, 690, 92)
    assert (large.epochs, large.total_steps, large.warmup_steps) == (15, 690, 92)  # = the equal-epochs plan here
    assert small.warmup_epochs == 23.0
    assert lr_factor(91, 4, train) == pytest.approx(1.0) and lr_factor(45, 4, train) == pytest.approx(46 / 92)
    assert lr_factor(92 + 299, 4, train) == pytest.approx(0.5)  # half-way through the 598 cosine steps
    assert lr_factor(689, 4, train) == pytest.approx(0.0, abs=1e-4)
    for steps in (4, 46):  # the same lr at every step, whatever the subset size
        assert lr_factor(300, steps, train) == lr_factor(300, 4, train)


def test_budget_keeps_existing_trial_ids_and_changes_a_budgeted_one():
    assert HASH_REFERENCE_TRAIN["budget"] is None
    plain = parse_sweep(TINY).trials[0]
    explicit = parse_sweep({**TINY, "train": {**TINY["train"], "budget": None}}).trials[0]
    budgeted = parse_sweep({**TINY, "train": {**TINY["train"], "budget": {"steps": 8}}}).trials[0]
    assert plain["trial_id"] == explicit["trial_id"] != budgeted["trial_id"]
    assert budgeted["train"]["budget"] == {"steps": 8}


def test_a_budget_ends_inside_an_epoch_and_warmup_end_analyses_follow_it():
    raw = {**TINY, "train_size": 64, "train": {**TINY["train"], "budget": {"steps": 5}},
           "analysis": [{"variance": {"n_samples": 8, "at": ["warmup_end", "end"]}}]}
    result = run_trial(parse_sweep(raw).trials[0], device="cpu")
    assert [h["steps"] for h in result["history"]] == [2, 4, 5]  # 64 images, batch 32: 2 steps per epoch
    assert result["recorded"]["total_steps"] == 5 and result["recorded"]["warmup_steps"] == 2  # round(5 * 1/2)
    assert sorted({r["epoch"] for r in result["analysis"]}) == [1, 3]  # warmup ends after epoch 1, training after 3
    assert result["train_samples_per_s"] > 0 and result["epochs"] == 3


@pytest.mark.slow
def test_two_fractions_under_a_steps_budget_train_the_same_steps(ray_local, tmp_path):
    """The acceptance test, through `bench run` and the store: under {steps: 12} a 64-image and a 192-image
    subset both end at 12 optimizer steps (epochs table), in 6 and 2 epochs; under equal epochs they do not."""
    from bench.cli import main

    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump({**TINY, "grid": {"train_size": [64, 192],
                                                      "train.budget": [{"steps": 12}, None]}}))
    assert main(["run", str(path), "--results", str(tmp_path / "results")]) == 0
    trials = pd.read_parquet(tmp_path / "results" / "budget" / "trials")
    epochs = pd.read_parquet(tmp_path / "results" / "budget" / "epochs")
    budget = trials.set_index("trial_id")["config"].map(lambda c: json.loads(c)["train"]["budget"])
    last = epochs.sort_values("epoch").groupby("trial_id").last()
    last["budget"] = budget.reindex(last.index).map(lambda b: b and b["steps"])
    last["n_train"] = trials.set_index("trial_id")["n_train"].reindex(last.index)
    steps = last[last["budget"] == 12].set_index("n_train")
    assert steps.loc[64, "steps"] == steps.loc[192, "steps"] == 12
    assert (steps.loc[64, "epoch"], steps.loc[192, "epoch"]) == (6, 2)
    plain = last[last["budget"].isna()].set_index("n_train")
    assert (plain.loc[64, "steps"], plain.loc[192, "steps"]) == (4, 12)  # equal epochs: 2 x 2 and 2 x 6 steps
    assert trials["ece"].between(0, 1).all()


def test_stacked_seeds_follow_the_budget_like_separate_runs():
    from bench.stacking import run_stacked
    from tests.test_stacking import _configs

    configs = _configs(seeds=(0, 1), budget={"steps": 5})  # 128 images, batch 32: 4 steps per epoch
    stacked = run_stacked(configs, device="cpu")
    separate = [run_trial(c, device="cpu") for c in configs]
    for one, many in zip(separate, stacked):
        assert [h["steps"] for h in many["history"]] == [h["steps"] for h in one["history"]] == [4, 5]
        assert many["recorded"]["total_steps"] == 5
        assert many["test_loss"] == pytest.approx(one["test_loss"], rel=1e-4)
        assert many["history"][-1]["train_loss"] == pytest.approx(one["history"][-1]["train_loss"], rel=1e-4)
