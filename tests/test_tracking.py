"""MLflow logging against a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.tracking import flatten, resolve_tracking

from tests.test_sweep import write_sweep

pytestmark = pytest.mark.slow


def test_sweep_logs_parent_and_child_runs_to_a_server(ray_local, mlflow_server, tmp_path, capsys):
    sweep, results = write_sweep(tmp_path, name="tracked", train={"epochs": 3, "batch_size": 32}), tmp_path / "results"
    assert main(["run", str(sweep), "--results", str(results), "--mlflow-uri", mlflow_server]) == 0
    assert not (results / "mlflow.db").exists()  # the server holds the runs, not a local SQLite file

    trials = pd.read_parquet(results / "tracked" / "trials").set_index("trial_id")
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "trial_id" not in r.data.tags]
    children = [r for r in runs if "trial_id" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].data.metrics["trials_ok"] == 2
    for run in children:
        row = trials.loc[run.data.tags["trial_id"]]
        assert run.info.run_id == row.mlflow_run_id
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.metrics["test_acc"] == row.test_acc
        assert run.data.params["train.epochs"] == "3" and run.data.params["model"] == "vit_ti"
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "test_loss")
        assert sorted(m.step for m in history) == [1, 2, 3]  # epoch 2 was not reported live (throttled), logged at the end


def test_mlflow_tracking_uri_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking(tmp_path, None) == ("http://127.0.0.1:5999", None)
    assert resolve_tracking(tmp_path, "http://127.0.0.1:6000")[0] == "http://127.0.0.1:6000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri, artifacts = resolve_tracking(tmp_path, None)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db" and artifacts.endswith("/mlartifacts")


def test_unreachable_server_is_bad_input_and_writes_nothing(tmp_path, capsys):
    from tests.conftest import free_port

    sweep, results = write_sweep(tmp_path), tmp_path / "results"
    uri = f"http://127.0.0.1:{free_port()}"
    assert main(["run", str(sweep), "--results", str(results), "--mlflow-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: --mlflow-uri") and "no MLflow server answers" in err
    assert len(err.splitlines()) == 1
    assert not (results / "tiny").exists()


def test_flatten_config_to_params():
    assert flatten("", {"a": {"b": 1, "c": [1, 2]}, "d": None}, {}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}


def test_background_tracker_runs_calls_in_order_off_the_callers_thread(tmp_path):
    """The sweep's tracker: calls queue on one thread in order; handles stand in for run ids."""
    import threading

    from bench.tracking import BackgroundTracker, Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    threads = set()

    class Recording(Tracker):
        def start_trial(self, config):
            threads.add(threading.current_thread().name)
            return super().start_trial(config)

    tracker = BackgroundTracker(lambda: Recording(uri, "queued"))
    tracker.start_sweep("queued", "", 1, 1, None)
    config = {"trial_id": "t1", "model": "vit_ti", "dataset": {"name": "spatial"}, "stage": "main", "train_size": 64, "seed": 0}
    handle = tracker.start_trial(config)
    for epoch in (1, 2):
        tracker.log_epoch(handle, {"epoch": epoch, "test_acc": 0.5 + epoch / 10})
    tracker.end_trial(handle, {"status": "ok", "test_acc": 0.7})
    run_id = BackgroundTracker.run_id(handle)
    tracker.end_sweep(1, 0)
    tracker.close()
    assert threads and threading.current_thread().name not in threads
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["trial_id"] == "t1"
    assert [m.value for m in sorted(client.get_metric_history(run_id, "test_acc"), key=lambda m: m.step)] == [0.6, 0.7]


def test_background_tracker_whose_store_cannot_start_warns_once_and_does_nothing(capsys):
    from bench.tracking import BackgroundTracker

    def broken():
        raise RuntimeError("no such store")

    tracker = BackgroundTracker(broken)
    handle = tracker.start_trial({"trial_id": "t"})
    tracker.end_trial(handle, {"status": "ok"})
    tracker.end_sweep(1, 0)
    tracker.close()
    assert BackgroundTracker.run_id(handle) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MLflow is not available (no such store)" in err
