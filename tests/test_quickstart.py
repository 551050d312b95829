"""The README's demo, end to end in a subprocess with its own Ray: table, store, MLflow, resume."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import REPO, mlflow_runs, run_cli

pytestmark = pytest.mark.slow


def table_of(stdout: str) -> str:
    return stdout[stdout.index("| model"):].strip()


def test_quickstart_runs_to_its_table_and_a_second_run_trains_nothing(tmp_path):
    results = tmp_path / "results"
    # One epoch keeps CI fast; everything else is the quickstart as shipped.
    args = ("run", str(REPO / "sweeps" / "quickstart.yaml"), "--results", str(results), "--set", "train.epochs=1")
    first = run_cli(*args, cwd=tmp_path, env={"RAY_ADDRESS": ""})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[12/12] ok" in first.stdout
    table = table_of(first.stdout)
    for model in ("resnet18", "vit_ti", "vit_ti_pos"):
        assert f"| {model}" in table

    trials = pd.read_parquet(results / "quickstart" / "trials")
    assert len(trials) == 12 and set(trials.status) == {"ok"}
    assert set(trials.n_train) == {256, 1024}
    children, _ = mlflow_runs(f"sqlite:///{results}/mlflow.db", "quickstart")
    assert len(children) == 12
    acc = dict(zip(trials.trial_id, trials.test_acc))
    assert all(run.data.metrics["test_acc"] == acc[run.data.tags["trial_id"]] for run in children)

    second = run_cli(*args, cwd=tmp_path, env={"RAY_ADDRESS": ""})
    assert second.returncode == 0, second.stderr[-3000:]
    assert "all 12 trials already have results" in second.stdout
    assert table_of(second.stdout) == table
    assert len(pd.read_parquet(results / "quickstart" / "trials")) == 12
