"""The Parquet result store: the source of truth for every sweep.

Layout under `<results>/<sweep>/`: `trials/` (one row per trial), `epochs/` (one row
per trial and epoch), `analysis/` (long format). One file per trial in each, named by
trial id, written to a hidden temporary name, fsynced (local disks) and renamed, so readers
never see half a file; a re-run of a trial (a retry of a failed one, or `--fresh`) replaces its file
atomically, so a plain `pandas.read_parquet(".../trials")` shows each trial once.

Paths go through pyarrow's filesystem layer, so `<results>` may later be a bucket URI.
Columns are only ever added: the schemas below are the stable core, and readers unify
files written by older versions.
"""

from __future__ import annotations

import json
import os
import re
import sys
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
        # Expected calibration error of the test predictions (bench.calibration: 10 equal-width
        # bins of top-1 confidence, as Park & Kim's ops/tests.py; the bin count in config.recorded).
        ("ece", pa.float64()),
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
        # Reference accuracies of the trial's data, where they are known in closed form
        # (`spatial`: the counting rule and the Bayes rule); a model is credited with
        # learning the spatial structure only above `baseline_counting`.
        ("baseline_chance", pa.float64()),
        ("baseline_counting", pa.float64()),
        ("baseline_bayes", pa.float64()),
        # Reliability: the epoch a diverged trial stopped at (loss not finite), and the epoch
        # its last attempt resumed from (None: it ran from epoch 0 in one go).
        ("diverged_epoch", pa.int64()),
        ("resumed_from_epoch", pa.int64()),
        # Tuned sweeps (bench.tuning): `search` rows are scored on a validation split and have no
        # test metrics; a `final` row names the search trial it took its values from and the
        # search budget its cell spent (the same for every cell of a fair comparison).
        ("phase", pa.string()),
        ("tune_cell", pa.string()),
        ("selected_from", pa.string()),
        ("val_acc", pa.float64()),
        ("val_loss", pa.float64()),
        ("budget_trials", pa.int64()),
        ("budget_epochs", pa.int64()),
        ("budget_wall_s", pa.float64()),
        # Speed (issue 12): seconds the first `torch.compile`d step took (None: not compiled),
        # left out of train_samples_per_s.
        ("compile_s", pa.float64()),
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
        ("attempt", pa.int64()),  # which attempt of the trial ran this epoch (> 1: after a resume)
        ("val_loss", pa.float64()),  # search trials of tuned sweeps: on the validation split, instead of test
        ("val_acc", pa.float64()),
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
        ("epoch", pa.int64()),  # after which epoch it was computed (0: at initialisation)
    ]
)

TABLES = {"trials": TRIALS_SCHEMA, "epochs": EPOCHS_SCHEMA, "analysis": ANALYSIS_SCHEMA}

#: Statuses of a trial that has run to its end: a re-run skips them (`--fresh` reruns them).
#: `failed` is not among them: a re-run tries a failed trial again.
FINISHED_STATUSES = ("ok", "diverged", "stopped")

#: Names used as path components (sweep, stage, trial id): no separators, no `..`, no hidden names.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(kind: str, name: str) -> str:
    """A sweep, stage or trial name that becomes a path component must stay one: nothing can
    write outside `<results>` (`../x`, `a/b`, an absolute path) or hide a file (`.x`)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{kind} name {name!r}: must be letters, digits, '.', '_' or '-', start with a letter "
                         "or digit and not contain '..' (it names a folder or file of the result store)")
    return name


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" in root and not root.startswith("file://"):
        from bench.storage import split_credentials

        clean, credentials = split_credentials(root)  # keys in the URI go to the environment: a pickled
        os.environ.update(credentials)  # store (Tune keeps its callbacks) must not carry them
        return pafs.FileSystem.from_uri(clean)
    path = root[len("file://") :] if root.startswith("file://") else root
    return pafs.LocalFileSystem(), os.path.abspath(path)


class ResultStore:
    """One sweep's results under `<root>/<sweep>/`."""

    def __init__(self, root: str | os.PathLike[str], sweep: str):
        self.fs, self.root = _filesystem(os.fspath(root))
        self.sweep = check_name("sweep", sweep)
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
        check_name("trial", trial_id)
        folder = f"{self.base}/{table}"
        self.fs.create_dir(folder, recursive=True)
        final = f"{folder}/{trial_id}.parquet"
        temp = f"{folder}/.{trial_id}.{uuid.uuid4().hex}.tmp"
        self._put(temp, final, lambda stream: pq.write_table(data, stream))
        return final

    def _put(self, temp: str, final: str, write) -> None:
        """Write a file under a temporary name, then rename it into place. On a local filesystem the
        data is fsynced before the rename: a node crash can lose the rename (the trial then runs
        again), never leave a zero-length or half-written file under the final name. A bucket's
        PUT is atomic already."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            with open(temp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
            return
        with self.fs.open_output_stream(temp) as stream:
            write(stream)
        self.fs.move(temp, final)

    # ------------------------------------------------------------------ reading

    def read(self, table: str) -> pd.DataFrame:
        """All rows of one table, schemas unified across files (columns only ever added).

        Honours compacted parts (`bench results compact`): each trial's rows come from
        one source only, its per-trial file if there is one, else the newest part.
        """
        from bench.compact import read_folder

        return read_folder(self.fs, f"{self.base}/{table}", TABLES[table]).to_pandas()

    # ------------------------------------------------------------------ weights

    def model_path(self, trial_id: str) -> str:
        """Where a trial's final weights live: `<results>/<sweep>/models/<trial_id>.pt`."""
        check_name("trial", trial_id)
        return f"{self.base}/models/{trial_id}.pt"

    def write_model(self, trial_id: str, state: dict[str, Any]) -> str:
        """A trial's final weights (a state dict), written atomically like every file of the store."""
        import io

        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        folder = f"{self.base}/models"
        self.fs.create_dir(folder, recursive=True)
        final, temp = self.model_path(trial_id), f"{folder}/.{trial_id}.{uuid.uuid4().hex}.tmp"
        self._put(temp, final, lambda stream: stream.write(buffer.getvalue()))
        return final

    def has_model(self, trial_id: str) -> bool:
        return self.fs.get_file_info(self.model_path(trial_id)).type == pafs.FileType.File

    def read_model(self, trial_id: str) -> dict[str, Any]:
        import io

        import torch

        with self.fs.open_input_stream(self.model_path(trial_id)) as stream:
            return torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=True)

    def read_trials(self) -> pd.DataFrame:
        return self.read("trials")

    def read_epochs(self) -> pd.DataFrame:
        return self.read("epochs")

    def ok_trial_ids(self) -> set[str]:
        trials = self.read_trials()
        return set(trials.loc[trials["status"] == "ok", "trial_id"])

    def finished_trial_ids(self) -> set[str]:
        """Trials that ran to their end (ok, diverged, stopped): what a re-run skips."""
        trials = self.read_trials()
        return set(trials.loc[trials["status"].isin(FINISHED_STATUSES), "trial_id"])

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoints_root(self) -> str:
        """Tune's checkpoints of this sweep's launches: `<results>/<sweep>/.tune/<launch>/<trial_id>/checkpoint_*`."""
        return f"{self.base}/.tune"

    def latest_checkpoint(self, trial_id: str, state_file: str) -> str | None:
        """The newest checkpoint any launch of this sweep left for `trial_id` (a driver that was
        killed or interrupted leaves its launch folder behind), or None."""
        check_name("trial", trial_id)
        found: list[tuple[float, str]] = []
        for launch in self._list(self.checkpoints_root):
            if launch.type != pafs.FileType.Directory:
                continue
            for entry in self._list(f"{launch.path}/{trial_id}"):
                if entry.type == pafs.FileType.Directory and entry.base_name.startswith("checkpoint_"):
                    info = self.fs.get_file_info(f"{entry.path}/{state_file}")
                    if info.type == pafs.FileType.File:
                        found.append((info.mtime.timestamp() if info.mtime else 0.0, info.path))
        return max(found)[1] if found else None

    def read_checkpoint(self, path: str) -> dict[str, Any]:
        """A trial's checkpoint state, loaded as plain tensors and Python values only (UnusableCheckpoint if not)."""
        try:
            with self.fs.open_input_stream(path) as stream:
                raw = stream.read()
        except (OSError, pa.ArrowException) as exc:
            raise UnusableCheckpoint(f"{path}: cannot be read ({_first_line(exc)})") from None
        return load_checkpoint_state(raw, path)

    def _list(self, folder: str) -> list[pafs.FileInfo]:
        try:
            return self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except (OSError, pa.ArrowException):
            return []


#: What a checkpoint state must hold to resume a trial (bench.train.run_trial's `get_state`).
CHECKPOINT_KEYS = frozenset({"epoch", "model", "optimizer", "scheduler", "generator", "torch_rng", "history",
                             "train_time", "samples_seen", "elapsed"})


class UnusableCheckpoint(ValueError):
    """A checkpoint that is not plain tensors and Python values, or not a trial's state: never resumed from."""


def load_checkpoint_state(raw: bytes, where: str) -> dict[str, Any]:
    """A checkpoint's state from its bytes, with `torch.load(weights_only=True)`: stored data is
    untrusted (anyone who can write to the store could plant a file), so nothing in it may run code.
    Older checkpoints that need full unpickling are refused like planted ones (the trial retrains)."""
    import io

    import torch

    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for forbidden globals, RuntimeError/EOFError for damaged files
        raise UnusableCheckpoint(f"{where}: not a plain-tensor checkpoint ({_first_line(exc)[:200]})") from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        raise UnusableCheckpoint(f"{where}: not a trial checkpoint (expected the keys {', '.join(sorted(CHECKPOINT_KEYS))})")
    return state


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


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
    """The trials-table row for a trial config and its result (or its error).

    The stored `config` is the resolved trial plus what the worker recorded about how it
    ran (`recorded`: which parameters were decayed or frozen, steps per epoch).
    """
    result = result or {}
    stored_config = {**config, "recorded": result["recorded"]} if result.get("recorded") else config
    from bench.data.baselines import spatial_baselines as data_baselines  # lazy: it imports torch, and
    # readers of the store (`bench results table/sql`) must not pay seconds for it
    try:  # reference numbers must never keep a finished trial from being recorded
        baselines = data_baselines(config["dataset"]) or {}
    except Exception as exc:
        print(f"bench: warning: {config.get('trial_id')}: no baselines for this dataset "
              f"({type(exc).__name__}: {str(exc)[:200]}); recorded empty", file=sys.stderr, flush=True)
        baselines = {}
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
        "ece": result.get("ece"),
        "train_loss": result.get("train_loss"),
        "train_acc": result.get("train_acc"),
        "params": result.get("params"),
        "flops": result.get("flops"),
        "wall_s": result.get("wall_s"),
        "train_samples_per_s": result.get("train_samples_per_s"),
        "device": result.get("device"),
        "attempts": attempts,
        "config": json.dumps(stored_config, sort_keys=True),
        "mlflow_run_id": mlflow_run_id,
        "started_at": started_at,
        "finished_at": finished_at or now_utc(),
        "bench_version": bench.__version__,
        "baseline_chance": baselines.get("chance"),
        "baseline_counting": baselines.get("counting"),
        "baseline_bayes": baselines.get("bayes"),
        "diverged_epoch": result.get("diverged_epoch"),
        "resumed_from_epoch": result.get("resumed_from_epoch"),
        "phase": config.get("phase"),
        "tune_cell": config.get("tune_cell"),
        "selected_from": config.get("selected_from"),
        "val_acc": result.get("val_acc"),
        "val_loss": result.get("val_loss"),
        "budget_trials": (config.get("budget") or {}).get("trials"),
        "budget_epochs": (config.get("budget") or {}).get("epochs"),
        "budget_wall_s": (config.get("budget") or {}).get("wall_s"),
        "compile_s": result.get("compile_s"),
    }
