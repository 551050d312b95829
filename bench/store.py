"""The Parquet result store: the source of truth for every sweep.

Layout under `<results>/<sweep>/`: `trials/` (one row per trial), `epochs/` (one row
per trial and epoch), `analysis/` (long format). One file per trial in each, named by
trial id, written to a hidden temporary name and renamed, so readers never see half a
file; a re-run of a trial (a retry of a failed one, or `--fresh`) replaces its file
atomically, so a plain `pandas.read_parquet(".../trials")` shows each trial once.

Paths go through pyarrow's filesystem layer, so `<results>` may later be a bucket URI.
Columns are only ever added: the schemas below are the stable core, and readers unify
files written by older versions.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import bench

TRIALS_SCHEMA = pa.schema(
    [
        ("sweep", pa.string()),
        ("stage", pa.string()),
        ("trial_id", pa.string()),
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("train_size", pa.float64()),
        ("n_train", pa.int64()),
        ("seed", pa.int64()),
        ("transfer", pa.string()),
        ("source_trial_id", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("epochs", pa.int64()),
        ("test_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("params", pa.int64()),
        ("flops", pa.int64()),
        ("wall_s", pa.float64()),
        ("train_samples_per_s", pa.float64()),
        ("device", pa.string()),
        ("attempts", pa.int64()),
        ("config", pa.string()),
        ("mlflow_run_id", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("bench_version", pa.string()),
    ]
)

EPOCHS_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("epoch", pa.int64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("test_acc", pa.float64()),
        ("lr", pa.float64()),
        ("wall_s", pa.float64()),
    ]
)

ANALYSIS_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("analysis", pa.string()),
        ("metric", pa.string()),
        ("layer", pa.string()),
        ("index", pa.int64()),
        ("value", pa.float64()),
    ]
)

TABLES = {"trials": TRIALS_SCHEMA, "epochs": EPOCHS_SCHEMA, "analysis": ANALYSIS_SCHEMA}


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" in root and not root.startswith("file://"):
        return pafs.FileSystem.from_uri(root)
    path = root[len("file://") :] if root.startswith("file://") else root
    return pafs.LocalFileSystem(), os.path.abspath(path)


class ResultStore:
    """One sweep's results under `<root>/<sweep>/`."""

    def __init__(self, root: str | os.PathLike[str], sweep: str):
        self.fs, self.root = _filesystem(os.fspath(root))
        self.sweep = sweep
        self.base = f"{self.root}/{sweep}"

    # ------------------------------------------------------------------ writing

    def write_trial(self, row: dict[str, Any]) -> str:
        return self._write("trials", row["trial_id"], [row])

    def write_epochs(self, trial_id: str, rows: list[dict[str, Any]]) -> str | None:
        return self._write("epochs", trial_id, [{"trial_id": trial_id, **r} for r in rows]) if rows else None

    def write_analysis(self, trial_id: str, rows: list[dict[str, Any]]) -> str | None:
        return self._write("analysis", trial_id, [{"trial_id": trial_id, **r} for r in rows]) if rows else None

    def _write(self, table: str, trial_id: str, rows: list[dict[str, Any]]) -> str:
        schema = _schema_for(TABLES[table], rows)
        data = pa.Table.from_pylist(rows, schema=schema)
        folder = f"{self.base}/{table}"
        self.fs.create_dir(folder, recursive=True)
        final = f"{folder}/{trial_id}.parquet"
        temp = f"{folder}/.{trial_id}.{uuid.uuid4().hex}.tmp"
        pq.write_table(data, temp, filesystem=self.fs)
        self.fs.move(temp, final)
        return final

    # ------------------------------------------------------------------ reading

    def read(self, table: str) -> pd.DataFrame:
        """All rows of one table, schemas unified across files (columns only ever added)."""
        folder = f"{self.base}/{table}"
        info = self.fs.get_file_info(folder)
        if info.type != pafs.FileType.Directory:
            return TABLES[table].empty_table().to_pandas()
        files = [
            f.path
            for f in self.fs.get_file_info(pafs.FileSelector(folder))
            if f.type == pafs.FileType.File and f.base_name.endswith(".parquet") and not f.base_name.startswith(".")
        ]
        if not files:
            return TABLES[table].empty_table().to_pandas()
        tables = [pq.read_table(path, filesystem=self.fs) for path in sorted(files)]
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def read_trials(self) -> pd.DataFrame:
        return self.read("trials")

    def read_epochs(self) -> pd.DataFrame:
        return self.read("epochs")

    def ok_trial_ids(self) -> set[str]:
        trials = self.read_trials()
        return set(trials.loc[trials["status"] == "ok", "trial_id"])


def list_sweeps(root: str | os.PathLike[str]) -> list[str]:
    """Names of the sweeps that have a trials table under `root`."""
    fs, base = _filesystem(os.fspath(root))
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    names = []
    for entry in fs.get_file_info(pafs.FileSelector(base)):
        if entry.type == pafs.FileType.Directory and fs.get_file_info(f"{entry.path}/trials").type == pafs.FileType.Directory:
            names.append(entry.base_name)
    return sorted(names)


def _schema_for(core: pa.Schema, rows: list[dict[str, Any]]) -> pa.Schema:
    """The core schema plus any extra columns the rows carry (types inferred)."""
    extra = sorted({k for r in rows for k in r} - set(core.names))
    if not extra:
        return core
    inferred = pa.Table.from_pylist([{k: r.get(k) for k in extra} for r in rows]).schema
    return pa.schema(list(core) + list(inferred))


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def trial_row(
    config: dict[str, Any],
    *,
    status: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    mlflow_run_id: str | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    attempts: int = 1,
) -> dict[str, Any]:
    """The trials-table row for a trial config and its result (or its error)."""
    result = result or {}
    return {
        "sweep": config["sweep"],
        "stage": config["stage"],
        "trial_id": config["trial_id"],
        "model": config["model"],
        "dataset": config["dataset"]["name"],
        "train_size": float(config["train_size"]),
        "n_train": result.get("n_train"),
        "seed": config["seed"],
        "transfer": config.get("transfer"),
        "source_trial_id": config.get("source"),
        "status": status,
        "error": error,
        "epochs": result.get("epochs"),
        "test_acc": result.get("test_acc"),
        "test_loss": result.get("test_loss"),
        "train_loss": result.get("train_loss"),
        "train_acc": result.get("train_acc"),
        "params": result.get("params"),
        "flops": result.get("flops"),
        "wall_s": result.get("wall_s"),
        "train_samples_per_s": result.get("train_samples_per_s"),
        "device": result.get("device"),
        "attempts": attempts,
        "config": json.dumps(config, sort_keys=True),
        "mlflow_run_id": mlflow_run_id,
        "started_at": started_at,
        "finished_at": finished_at or now_utc(),
        "bench_version": bench.__version__,
    }
