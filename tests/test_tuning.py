"""Tuned comparisons (`tune:`): searches per cell on a validation split, then final trials.

Real data (scikit-learn's handwritten digits as an ImageFolder), real Ray Tune, real Parquet.
"""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest
import torch
import yaml

from bench.cli import main
from bench.data.trial import validation_split
from bench.errors import BenchInputError
from bench.spec import parse_sweep
from bench import tuning
from tests.helpers.digits import write_digits_imagefolder
from tests.test_reliability import finish, launch, ok_rows, wait_for

SPACE = {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}


def tuned(**fields):
    base = {"name": "t", "model": "resnet18", "grid": {"model": ["resnet18", "vit_ti"], "seed": [0, 1]},
            "tune": {"space": SPACE, "num_samples": 4}}
    base.update(fields)
    return parse_sweep(base)


@pytest.mark.parametrize("tune,fragment", [
    ({"space": {"train.lr": {"logunifrom": [1e-4, 1e-2]}}}, "unknown distribution 'logunifrom'; did you mean 'loguniform'"),
    ({"space": {"train.lr": {"loguniform": [1e-2, 1e-4]}}}, "bounds reversed"),
    ({"space": {"train.lr": {"uniform": [0.5, 0.5]}}}, "bounds reversed or equal"),
    ({"space": SPACE, "per": ["train_size"]}, "tune.per: 'train_size' is not a grid key"),
    ({"space": SPACE, "metric": "test_acc"}, "test metrics are never used for selection"),
    ({"space": SPACE, "metric": "accuracy"}, "'accuracy' is not reported by trials"),
    ({"space": {"train.lr": {"choice": []}}}, "choice: expected a non-empty list"),
    ({"space": {"train.optimizer": {"choice": ["adamw", "adam"]}}}, "'adam' is not a valid value"),
    ({"space": {"seed": {"randint": [0, 3]}}}, "only train.* and model_args.* fields"),
    ({"space": {}}, "an empty search space"),
    ({"space": SPACE, "scheduler": {"name": "hyperband"}}, "tune.scheduler.name"),
])
def test_bad_tune_sections_are_one_line_errors(tune, fragment):
    with pytest.raises(BenchInputError, match=None) as caught:
        tuned(tune=tune)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_cells_samples_and_ids_are_stable():
    sweep = tuned()
    assert [c.label for c in sweep.cells] == [{"model": "resnet18"}, {"model": "vit_ti"}]  # seed is never a cell
    assert [len(c.members) for c in sweep.cells] == [2, 2]
    samples = tuning.random_samples(sweep.tune, sweep.name, sweep.cells[0])
    assert samples == tuning.random_samples(tuned().tune, "t", tuned().cells[0])  # the same on every run
    assert len(samples) == 4 and all(1e-4 <= s["train.lr"] <= 1e-2 for s in samples)
    configs = [tuning.search_config(sweep.cells[0], sweep.tune, s) for s in samples]
    assert len({c["trial_id"] for c in configs}) == 4
    assert all(c["phase"] == "search" and c["val_size"] == 0.1 for c in configs)
    assert {c["trial_id"] for c in configs}.isdisjoint(t["trial_id"] for t in sweep.trials)
    untouched = parse_sweep({"name": "t", "model": "resnet18", "grid": {"model": ["resnet18", "vit_ti"], "seed": [0, 1]}})
    assert [t["trial_id"] for t in untouched.trials] == [t["trial_id"] for t in sweep.trials]


def test_the_validation_split_is_stratified_fixed_and_apart_from_training():
    labels = torch.arange(10).repeat_interleave(50)
    val, rest = validation_split(labels, 0.1)
    assert len(val) == 50 and set(val.tolist()).isdisjoint(rest.tolist()) and len(rest) == 450
    assert torch.bincount(labels[val]).tolist() == [5] * 10
    smaller, _ = validation_split(labels, 20)
    assert set(smaller.tolist()) <= set(val.tolist())  # nested, like the subsets


def digits_sweep(tmp_path, name: str, **extra) -> str:
    root = tmp_path / "digits"
    if not root.exists():
        write_digits_imagefolder(root, size=16)
    sweep = {
        "name": name, "model": "resnet18", "model_args": {"width": 8},
        "dataset": {"name": "imagefolder", "root": str(root)},
        "train": {"epochs": 3, "batch_size": 64, "lr": 1.0, "warmup_epochs": 0},  # a hopeless learning rate
        "train_size": 500, "resources": {"cpus_per_trial": 1, "max_failures": 0}, "grid": {"seed": [0]}, **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return str(path)


@pytest.mark.slow
def test_a_search_rescues_a_hopeless_learning_rate_without_seeing_the_test_set(ray_local, tmp_path, capsys):
    results = str(tmp_path / "results")
    assert main(["run", digits_sweep(tmp_path, "untuned"), "--results", results]) == 0
    untuned = pd.read_parquet(tmp_path / "results" / "untuned" / "trials")
    search = {"space": SPACE, "num_samples": 6, "per": []}
    assert main(["run", digits_sweep(tmp_path, "tuned", tune=search), "--results", results]) == 0
    out = capsys.readouterr().out
    trials = pd.read_parquet(tmp_path / "results" / "tuned" / "trials")
    searched, final = trials[trials.phase == "search"], trials[trials.phase == "final"]
    assert len(searched) == 6 and len(final) == 1
    assert searched.test_acc.isna().all() and searched.test_loss.isna().all()  # selection never saw the test set
    epochs = pd.read_parquet(tmp_path / "results" / "tuned" / "epochs")
    assert epochs[epochs.trial_id.isin(searched.trial_id)].test_acc.isna().all()
    assert searched.val_acc.notna().all()
    row = final.iloc[0]
    assert row.selected_from == searched.loc[searched.val_acc.idxmax(), "trial_id"]
    assert row.budget_trials == 6 and row.budget_epochs == 18
    assert untuned.test_acc.iloc[0] < 0.2  # chance is 0.1
    assert row.test_acc > 0.6, (row.test_acc, searched.val_acc.tolist())
    assert "| resnet18" in out  # bench run ends with the final comparison

    assert main(["results", "best", "tuned", "--results", results]) == 0
    best = capsys.readouterr().out
    assert row.selected_from in best and "train.lr" in best
    assert main(["results", "table", "tuned", "--results", results, "--phase", "search", "--metric", "val_acc",
                 "--cols", "train.lr"]) == 0
    assert capsys.readouterr().out.count("(n=1)") == 6


@pytest.mark.slow
def test_asha_stops_trials_early_and_optuna_resumes_from_the_store(ray_local, tmp_path):
    results = str(tmp_path / "results")
    search = {"space": SPACE, "num_samples": 4, "per": [], "algorithm": "optuna",
              "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}}
    sweep = digits_sweep(tmp_path, "asha", tune=search, train={"epochs": 4, "batch_size": 64, "lr": 1.0})
    assert main(["run", sweep, "--results", results]) == 0
    trials = pd.read_parquet(tmp_path / "results" / "asha" / "trials")
    searched = trials[trials.phase == "search"]
    assert len(searched) == 4 and (trials.phase == "final").sum() == 1
    stopped = searched[searched.status == "stopped"]
    assert len(stopped) >= 1 and (stopped.epochs < 4).all()  # ASHA cut them at a rung
    epochs = pd.read_parquet(tmp_path / "results" / "asha" / "epochs")
    assert set(epochs.trial_id) >= set(stopped.trial_id)  # their curves up to the stop are kept
    # A re-run with a larger budget samples only the difference (the study is rebuilt from the store).
    assert main(["run", sweep, "--results", results, "--set", "tune.num_samples=5"]) == 0
    again = pd.read_parquet(tmp_path / "results" / "asha" / "trials")
    assert (again.phase == "search").sum() == 5


@pytest.mark.slow
def test_killing_the_driver_during_a_search_keeps_the_budget_exact(tmp_path):
    from tests.test_reliability import slow_sweep

    name, results = "killsearch", tmp_path / "results"
    path = slow_sweep(tmp_path, name, epochs=[6], sleep_s=0.3,
                      tune={"space": {"train.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, "num_samples": 4, "per": []})
    raw = yaml.safe_load(path.read_text())
    raw["grid"] = {"seed": [0, 1]}
    raw["train"]["epochs"] = 6
    path.write_text(yaml.safe_dump(raw))
    first = launch(path, results)
    wait_for(lambda: len(ok_rows(results, name)) >= 2, 240, "two search trials", first)
    os.killpg(first.pid, signal.SIGKILL)
    finish(first, 60)
    second = launch(path, results)
    code, out, err = finish(second, 400)
    assert code == 0, out[-3000:] + err[-3000:]
    trials = ok_rows(results, name)
    assert trials.trial_id.is_unique
    assert (trials.phase == "search").sum() == 4  # exactly num_samples for the one cell
    final = trials[trials.phase == "final"]
    assert sorted(final.seed) == [0, 1] and final.selected_from.nunique() == 1  # one per cell and seed
