"""The Parquet store: round trips, atomic replacement, schema evolution, plain-pandas reads."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.spec import parse_sweep
from bench.store import TRIALS_SCHEMA, ResultStore, list_sweeps, trial_row

CONFIG = parse_sweep({"name": "s", "model": "resnet18", "grid": {"seed": [0, 1]}}).trials


def ok_row(config, acc=0.5):
    result = {"n_train": 100, "epochs": 2, "test_acc": acc, "test_loss": 0.7, "train_loss": 0.6, "train_acc": 0.8,
              "params": 10, "flops": 20, "wall_s": 1.5, "train_samples_per_s": 99.0, "device": "cpu"}
    return trial_row(config, status="ok", result=result, mlflow_run_id="abc",
                     started_at=datetime(2026, 1, 1, tzinfo=timezone.utc))


def test_round_trip_with_plain_pandas(tmp_path):
    store = ResultStore(tmp_path, "s")
    store.write_trial(ok_row(CONFIG[0], 0.25))
    store.write_trial(trial_row(CONFIG[1], status="failed", error="RuntimeError: boom"))
    df = pd.read_parquet(tmp_path / "s" / "trials")
    assert len(df) == 2
    assert set(TRIALS_SCHEMA.names) <= set(df.columns)
    ok = df[df.status == "ok"].iloc[0]
    assert ok.test_acc == 0.25 and ok.n_train == 100 and ok.model == "resnet18" and ok.dataset == "spatial"
    assert json.loads(ok.config)["trial_id"] == ok.trial_id
    failed = df[df.status == "failed"].iloc[0]
    assert failed.error == "RuntimeError: boom" and pd.isna(failed.test_acc)
    assert store.ok_trial_ids() == {CONFIG[0]["trial_id"]}


def test_rerun_replaces_the_trial_file_atomically(tmp_path):
    store = ResultStore(tmp_path, "s")
    store.write_trial(trial_row(CONFIG[0], status="failed", error="x"))
    store.write_trial(ok_row(CONFIG[0], 0.75))
    df = pd.read_parquet(tmp_path / "s" / "trials")
    assert list(df.status) == ["ok"] and list(df.test_acc) == [0.75]
    assert not [p for p in (tmp_path / "s" / "trials").iterdir() if p.name.startswith(".")]  # no temp files left


def test_readers_ignore_half_written_temp_files(tmp_path):
    store = ResultStore(tmp_path, "s")
    store.write_trial(ok_row(CONFIG[0]))
    (tmp_path / "s" / "trials" / ".abc.123.tmp").write_bytes(b"PAR1 half a file")
    assert len(store.read_trials()) == 1
    assert len(pd.read_parquet(tmp_path / "s" / "trials")) == 1


def test_epochs_table(tmp_path):
    store = ResultStore(tmp_path, "s")
    rows = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5, "lr": 0.1, "wall_s": e}
            for e in (1, 2, 3)]
    store.write_epochs("t1", rows)
    df = pd.read_parquet(tmp_path / "s" / "epochs")
    assert list(df.epoch) == [1, 2, 3] and set(df.trial_id) == {"t1"}


def test_schemas_are_unified_across_versions(tmp_path):
    """An old file without a column and a new one with an extra column read as one table."""
    store = ResultStore(tmp_path, "s")
    folder = tmp_path / "s" / "trials"
    folder.mkdir(parents=True)
    old = pa.Table.from_pylist([{"trial_id": "old", "status": "ok", "test_acc": 0.1}])
    pq.write_table(old, folder / "old.parquet")
    store.write_trial({**ok_row(CONFIG[0]), "ece": 0.03})
    df = store.read_trials()
    assert len(df) == 2
    assert df.set_index("trial_id").loc[CONFIG[0]["trial_id"], "ece"] == 0.03
    assert pd.isna(df.set_index("trial_id").loc["old", "ece"])


def test_empty_store_reads_as_empty_frames_with_columns(tmp_path):
    store = ResultStore(tmp_path, "nothing")
    assert store.read_trials().empty and "trial_id" in store.read_trials().columns
    assert store.ok_trial_ids() == set()
    assert list_sweeps(tmp_path / "missing") == []


def test_list_sweeps(tmp_path):
    ResultStore(tmp_path, "b").write_trial(ok_row(CONFIG[0]))
    ResultStore(tmp_path, "a").write_trial(ok_row(CONFIG[1]))
    (tmp_path / "not-a-sweep").mkdir()
    assert list_sweeps(tmp_path) == ["a", "b"]


def test_files_are_fsynced_before_they_are_renamed_into_place(tmp_path, monkeypatch):
    import os

    import bench.store as store_module

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(store_module.os, "replace", lambda a, b: (calls.append(f"rename {os.path.basename(b)}"),
                                                                  real_replace(a, b))[1])
    store = ResultStore(tmp_path, "s")
    store.write_trial(ok_row(CONFIG[0]))
    store.write_model(CONFIG[0]["trial_id"], {"w": __import__("torch").zeros(2)})
    tid = CONFIG[0]["trial_id"]
    assert calls == ["fsync", f"rename {tid}.parquet", "fsync", f"rename {tid}.pt"]
    assert len(store.read_trials()) == 1 and store.read_model(tid)["w"].shape == (2,)
