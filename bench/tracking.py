"""MLflow mirror of the result store: a parent run per launch, a child run per trial.

All logging happens in the driver (the orchestrator's callbacks), never in trial
workers, so many concurrent trials never write one SQLite file, and a cluster's
workers need no route to the tracking server. The Parquet store stays the source of
truth: a tracking failure is reported as a warning and the sweep goes on.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from bench.errors import BenchInputError

# A tracking server that stops answering must cost seconds, not MLflow's default minutes of
# retries per call: a few quick retries, then the launch goes on without it.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# Our progress lines and tables own stdout; MLflow would add a "View run ... at" line per run.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

# Row fields mirrored as child-run metrics at the end of a trial.
FINAL_METRICS = ("test_acc", "test_loss", "val_acc", "val_loss", "train_loss", "train_acc", "params", "flops", "wall_s",
                 "train_samples_per_s", "n_train")
EPOCH_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc", "lr", "wall_s")


def default_tracking_uri(results_dir: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(results_dir).resolve()}/mlflow.db"


def resolve_tracking(results_dir: str | os.PathLike[str], cli_uri: str | None) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments): --mlflow-uri, then MLFLOW_TRACKING_URI, then the default.

    Only the default local store puts artifacts under `<results>/mlartifacts`; a server
    keeps its own artifact store.
    """
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        from bench.storage import split_credentials

        uri, credentials = split_credentials(uri)  # http://user:pass@host: to MLFLOW_TRACKING_USERNAME/_PASSWORD
        os.environ.update(credentials)  # so that no line, log or job shows the password
        return uri, None
    return default_tracking_uri(results_dir), (Path(results_dir).resolve() / "mlartifacts").as_uri()


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (exit 2) on an http(s) tracking URI nobody answers, instead of retrying for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # something answered; MLflow servers behind proxies may not expose /health
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        from bench.storage import without_credentials

        raise BenchInputError(f"--mlflow-uri {without_credentials(uri)}: no MLflow server answers there "
                              f"({without_credentials(str(reason))})") from None


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    """Nested config -> dotted MLflow params."""
    if isinstance(value, dict):
        for key, sub in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = str(value)
    return out


class Tracker:
    """Driver-side MLflow logging for one launch of one sweep."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None):
        import mlflow  # noqa: F401  (heavy; imported only when tracking is used)
        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        existing = self.client.get_experiment_by_name(experiment)
        if existing is not None:
            self.experiment_id = existing.experiment_id
        else:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
        self.parent_run_id: str | None = None
        self._runs_with_epochs: set[str] = set()
        self._logged_steps: dict[str, set[int]] = {}
        self.experiment = experiment
        self.offline = False

    def _guard(self, what: str, fn, *args, **kwargs):
        """Call MLflow; on the first failure warn once and stop tracking for the rest of the launch.

        The Parquet store is the truth; a tracking outage must neither kill the sweep nor slow
        each trial by a round of retries. `bench results sync-mlflow` backfills the runs later.
        """
        if self.offline:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            first = " ".join(str(exc).split())[:300]
            print(f"bench: warning: MLflow {what} failed ({first}); tracking is off for the rest of this launch, "
                  f"results still go to Parquet; backfill later with: bench results sync-mlflow {self.experiment}",
                  file=sys.stderr)
            self.offline = True
            return None

    def start_sweep(self, name: str, description: str, n_trials: int, n_pending: int, source: str | None) -> str | None:
        tags = {"bench.sweep": name, "bench.kind": "sweep", "mlflow.note.content": description}
        run = self._guard("create_run", self.client.create_run, self.experiment_id, run_name=f"{name} launch", tags=tags)
        if run is None:
            return None
        self.parent_run_id = run.info.run_id
        params = {"sweep": name, "trials": str(n_trials), "pending": str(n_pending), "sweep_file": str(source)}
        self._guard("log", self._log, self.parent_run_id, params=params)
        return self.parent_run_id

    def start_trial(self, config: dict[str, Any]) -> str | None:
        tags = {
            "mlflow.parentRunId": self.parent_run_id or "",
            "trial_id": config["trial_id"],
            "model": config["model"],
            "dataset": config["dataset"]["name"],
            "stage": config["stage"],
        }
        run_name = f"{config['model']} {config['dataset']['name']} n={config['train_size']} s={config['seed']}"
        run = self._guard("create_run", self.client.create_run, self.experiment_id, run_name=run_name, tags=tags)
        if run is None:
            return None
        params = flatten("", {k: v for k, v in config.items() if k not in ("trial_id", "sweep")}, {})
        self._guard("log", self._log, run.info.run_id, params=params)
        return run.info.run_id

    def log_epoch(self, run_id: str | None, row: dict[str, Any]) -> None:
        if run_id is None:
            return
        metrics = {k: row[k] for k in EPOCH_METRICS if row.get(k) is not None}
        self._guard("log", self._log, run_id, metrics=metrics, step=int(row["epoch"]))
        self._runs_with_epochs.add(run_id)
        self._logged_steps.setdefault(run_id, set()).add(int(row["epoch"]))

    def log_history(self, run_id: str | None, history: list[dict[str, Any]], max_points: int = 1000) -> None:
        """The epochs that live reports skipped (they are throttled), so the run's curves are whole.

        At most `max_points` epochs per curve (evenly thinned, the last always kept): a 10^4-step
        full-batch run's every epoch is in the Parquet epochs table, its curve in MLflow is thinned.
        """
        if run_id is None or not history:
            return
        from mlflow.entities import Metric

        stride = max(1, -(-len(history) // max_points))
        chosen = [r for i, r in enumerate(history) if i % stride == 0 or i == len(history) - 1]
        done = self._logged_steps.get(run_id, set())
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(r[k]), now, int(r["epoch"])) for r in chosen if int(r["epoch"]) not in done
                   for k in EPOCH_METRICS if r.get(k) is not None]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self._guard("log", self.client.log_batch, run_id, metrics=metrics[start : start + 1000])
        self._runs_with_epochs.add(run_id)

    def end_trial(self, run_id: str | None, row: dict[str, Any]) -> None:
        if run_id is None:
            return
        # Metrics with an epoch series already end on the final value; logging them again
        # would add a stray point to the curve.
        skip = set(EPOCH_METRICS) if run_id in self._runs_with_epochs else set()
        metrics = {k: row[k] for k in FINAL_METRICS if row.get(k) is not None and k not in skip}
        tags = {"status": row["status"]}
        if row.get("error"):
            tags["error"] = str(row["error"])[:5000]
        self._guard("log", self._log, run_id, metrics=metrics, tags=tags)
        self._guard("set_terminated", self.client.set_terminated, run_id, "FINISHED" if row["status"] == "ok" else "FAILED")

    def log_weights(self, run_id: str | None, trial_id: str, state: dict[str, Any]) -> None:
        """The trial's final weights as an artifact of its run (`model/<trial_id>.pt`)."""
        if run_id is None:
            return
        import tempfile

        import torch

        def log() -> None:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / f"{trial_id}.pt"
                torch.save(state, path)
                self.client.log_artifact(run_id, str(path), artifact_path="model")

        self._guard("log_artifact", log)

    def end_sweep(self, ok: int, failed: int) -> None:
        if self.parent_run_id is None:
            return
        self._guard("log", self._log, self.parent_run_id, metrics={"trials_ok": ok, "trials_failed": failed})
        self._guard("set_terminated", self.client.set_terminated, self.parent_run_id, "FINISHED" if failed == 0 else "FAILED")

    def _log(self, run_id: str, params: dict[str, str] | None = None, metrics: dict[str, float] | None = None,
             tags: dict[str, str] | None = None, step: int = 0) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, v[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )


class BackgroundTracker:
    """A Tracker whose calls run in order on one thread of their own, so the Tune loop that
    schedules trials never waits for MLflow (creating the store, its migrations, a run per
    trial, a slow server). The Parquet store is written by the caller as before.

    `start_trial` returns a handle (a Future of the run id) that later calls take in place
    of the run id; `run_id(handle)` waits for it where a row needs it. `close()` waits for
    every queued call: a launch ends with its runs finished.
    """

    def __init__(self, make: Callable[[], Tracker]):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-mlflow")
        self._tracker: Future = self._pool.submit(self._make, make)

    @staticmethod
    def _make(make: Callable[[], Tracker]) -> Tracker | None:
        try:
            return make()
        except Exception as exc:
            print(f"bench: warning: MLflow is not available ({' '.join(str(exc).split())[:300]}); results still go "
                  "to Parquet; backfill later with: bench results sync-mlflow SWEEP", file=sys.stderr)
            return None

    def _call(self, method: str, *args: Any) -> Future:
        def run() -> Any:
            tracker = self._tracker.result()
            if tracker is None:
                return None
            resolved = [self.run_id(a) if isinstance(a, Future) else a for a in args]
            return getattr(tracker, method)(*resolved)

        return self._pool.submit(run)

    @staticmethod
    def run_id(handle: "Future | str | None") -> str | None:
        """The run id behind a handle (waits for its creation), None if it has none."""
        if not isinstance(handle, Future):
            return handle
        try:
            return handle.result()
        except Exception:
            return None

    def start_sweep(self, name: str, description: str, n_trials: int, n_pending: int, source: str | None) -> Future:
        return self._call("start_sweep", name, description, n_trials, n_pending, source)

    def start_trial(self, config: dict[str, Any]) -> Future:
        return self._call("start_trial", config)

    def log_epoch(self, run: Future | None, row: dict[str, Any]) -> None:
        self._call("log_epoch", run, dict(row))

    def log_history(self, run: Future | None, history: list[dict[str, Any]]) -> None:
        self._call("log_history", run, list(history))

    def log_weights(self, run: Future | None, trial_id: str, state: dict[str, Any]) -> None:
        self._call("log_weights", run, trial_id, state)

    def end_trial(self, run: Future | None, row: dict[str, Any]) -> None:
        self._call("end_trial", run, dict(row))

    def end_sweep(self, ok: int, failed: int) -> None:
        self._call("end_sweep", ok, failed)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
