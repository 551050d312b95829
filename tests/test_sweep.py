"""Sweeps on a real local Ray Tune: results, resume, retries from checkpoints, failures."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from bench.cli import main
from bench.store import TRIALS_SCHEMA

from tests.conftest import mlflow_runs

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny",
    "model": "vit_ti",
    "model_args": {"patch_size": 4, "dim": 16, "depth": 1, "heads": 2},
    "dataset": {"name": "spatial", "num_train": 256, "num_test": 128},
    "train": {"epochs": 2, "batch_size": 32, "lr": 3e-3},
    "train_size": 128,
    "resources": {"cpus_per_trial": 1, "max_failures": 1},
    "grid": {"seed": [0, 1]},
}


def write_sweep(tmp_path, **fields):
    path = tmp_path / f"{fields.get('name', 'tiny')}.yaml"
    path.write_text(yaml.safe_dump({**TINY, **fields}, sort_keys=False))
    return path


def test_two_trial_sweep_writes_parquet_and_mlflow_then_resumes(ray_local, tmp_path, capsys):
    sweep, results = write_sweep(tmp_path), tmp_path / "results"
    assert main(["run", str(sweep), "--results", str(results)]) == 0
    first_out = capsys.readouterr().out

    trials = pd.read_parquet(results / "tiny" / "trials")
    assert len(trials) == 2 and set(trials.status) == {"ok"}
    assert set(TRIALS_SCHEMA.names) <= set(trials.columns)
    assert set(trials.seed) == {0, 1} and set(trials.n_train) == {128} and set(trials.epochs) == {2}
    assert trials.test_acc.between(0, 1).all() and (trials.flops > 0).all()
    assert not (results / "tiny" / ".tune").exists()  # retry checkpoints are removed once the launch ends
    epochs = pd.read_parquet(results / "tiny" / "epochs")
    assert len(epochs) == 4 and set(epochs.trial_id) == set(trials.trial_id)

    children, parents = mlflow_runs(f"sqlite:///{results}/mlflow.db", "tiny")
    assert len(children) == 2 and len(parents) == 1
    by_id = trials.set_index("trial_id")
    for run in children:
        row = by_id.loc[run.data.tags["trial_id"]]
        assert run.data.metrics["test_acc"] == row.test_acc and run.info.run_id == row.mlflow_run_id
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert "| vit_ti" in first_out and "2/2" in first_out

    files = {p.name: p.stat().st_mtime_ns for p in (results / "tiny" / "trials").iterdir()}
    assert main(["run", str(sweep), "--results", str(results)]) == 0
    second_out = capsys.readouterr().out
    assert "all 2 trials already have results" in second_out
    assert {p.name: p.stat().st_mtime_ns for p in (results / "tiny" / "trials").iterdir()} == files
    assert second_out.split("\n\n")[-1] == first_out.split("\n\n")[-1]  # the same table

    assert main(["run", str(sweep), "--results", str(results), "--fresh"]) == 0
    assert "2 trials to run (0 already done)" in capsys.readouterr().out
    assert len(pd.read_parquet(results / "tiny" / "trials")) == 2  # rerun rows replace, not duplicate


def test_a_failed_trial_is_retried_from_its_checkpoint(ray_local, tmp_path):
    marker = tmp_path / "failures.log"
    sweep = write_sweep(
        tmp_path, name="flaky", model="flaky_net", model_args={"marker": str(marker), "fail_times": 1, "fail_after": 5},
        train={"epochs": 3, "batch_size": 32, "lr": 1e-2}, grid={"seed": [0]},
    )
    results = tmp_path / "results"
    assert main(["run", str(sweep), "--results", str(results)]) == 0
    assert marker.read_text().count("failed") == 1  # it really failed once, in epoch 2
    row = pd.read_parquet(results / "flaky" / "trials").iloc[0]
    assert row.status == "ok" and row.attempts == 2 and row.epochs == 3
    epochs = pd.read_parquet(results / "flaky" / "epochs")
    assert list(epochs.sort_values("epoch").epoch) == [1, 2, 3]  # epoch 1 came from the checkpoint


def test_exhausted_retries_give_a_failed_row_and_exit_1_without_losing_the_rest(ray_local, tmp_path):
    marker = tmp_path / "failures.log"
    sweep = write_sweep(
        tmp_path, name="mixed", model="flaky_net", model_args={"marker": str(marker), "fail_after": 0},
        train={"epochs": 1, "batch_size": 32}, grid={"model_args.fail_times": [0, 99]},
    )
    results = tmp_path / "results"
    assert main(["run", str(sweep), "--results", str(results)]) == 1
    trials = pd.read_parquet(results / "mixed" / "trials").set_index("status")
    assert sorted(trials.index) == ["failed", "ok"]
    failed = trials.loc["failed"]
    assert "planned failure" in failed.error and failed.attempts == 2  # max_failures: 1 -> two attempts
    assert marker.read_text().count("failed") == 2

    children, _ = mlflow_runs(f"sqlite:///{results}/mlflow.db", "mixed")
    assert sorted(run.info.status for run in children) == ["FAILED", "FINISHED"]

    # Resume reruns only the failed trial (it fails again); the ok one is not touched.
    assert main(["run", str(sweep), "--results", str(results)]) == 1
    assert marker.read_text().count("failed") == 4


def test_long_full_batch_runs_report_sparsely_and_store_every_epoch_and_analysis(ray_local, tmp_path):
    """A 150-epoch full-batch GD run of pa_theory: live reports (checkpoints, progress, MLflow)
    are throttled to `report_every_s`, the epochs table and the MLflow curve still have every
    epoch, patch association is stored over training, and the rows carry the data's counting
    and Bayes accuracies."""
    sweep = write_sweep(
        tmp_path, name="gd", model="pa_theory", model_args={},
        dataset={"name": "spatial", "num_patches": 10, "patch_dim": 10, "set_size": 2, "partition": "random",
                 "num_train": 512, "num_test": 256},
        train={"epochs": 150, "batch_size": "full", "optimizer": "sgd", "momentum": 0.0, "lr": 0.02,
               "weight_decay": 0.0, "schedule": "constant", "grad_clip": None},
        train_size=1.0, analysis=[{"patch_association": {"every": 50}}],
        resources={"cpus_per_trial": 1, "max_failures": 0, "report_every_s": 3600}, grid={"seed": [0]},
    )
    results = tmp_path / "results"
    assert main(["run", str(sweep), "--results", str(results)]) == 0
    row = pd.read_parquet(results / "gd" / "trials").iloc[0]
    assert row.status == "ok" and row.epochs == 150 and row.n_train == 512
    assert row.baseline_counting == pytest.approx(0.8338, abs=1e-4) and row.baseline_bayes == pytest.approx(0.8961, abs=1e-4)
    config = json.loads(row.config)
    assert config["recorded"]["steps_per_epoch"] == 1
    assert config["recorded"]["param_groups"] == {"decay": [], "no_decay": ["v", "attn.offdiag"], "frozen": []}

    epochs = pd.read_parquet(results / "gd" / "epochs")
    assert sorted(epochs.epoch) == list(range(1, 151))  # every epoch kept
    analysis = pd.read_parquet(results / "gd" / "analysis")
    exact = analysis[(analysis.metric == "exact") & (analysis.layer == "A")]
    assert sorted(exact.epoch) == [0, 50, 100, 150]
    # Def. 2.2 and the off-diagonal reading, both recorded at every analysed epoch.
    for metric in ("soft", "gap", "exact_offdiag", "soft_offdiag"):
        assert sorted(analysis[(analysis.metric == metric) & (analysis.layer == "A")].epoch) == [0, 50, 100, 150]
    assert set(analysis[analysis.metric == "cos_v_w"].epoch) == {0, 50, 100, 150}
    assert (analysis.metric == "map").sum() == 100  # the 10 x 10 logits at the end

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results}/mlflow.db")
    history = client.get_metric_history(row.mlflow_run_id, "test_acc")
    assert sorted(m.step for m in history) == list(range(1, 151))  # live reports skipped, the curve is whole
