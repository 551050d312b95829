"""Rebuild MLflow from the Parquet store: `bench results sync-mlflow SWEEP`.

The store is the source of truth and MLflow its mirror. When the tracking server was
down or slow during a launch, trials still landed in Parquet but their runs are missing
or were left unfinished. Syncing gives every stored trial exactly one run (found by its
`trial_id` tag): missing runs are created under the sweep's latest launch run, unfinished
ones are completed, finished ones are left alone, so syncing twice changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.store import ResultStore
from bench.tracking import Tracker

TERMINAL = ("FINISHED", "FAILED", "KILLED")


@dataclass
class SyncReport:
    created: int
    completed: int
    present: int


def _existing_runs(tracker: Tracker) -> dict[str, Any]:
    """trial_id -> the run that carries it (the finished one if there are several)."""
    runs: dict[str, Any] = {}
    token = None
    while True:
        page = tracker.client.search_runs([tracker.experiment_id], filter_string="", max_results=5000, page_token=token)
        for run in page:
            tid = run.data.tags.get("trial_id")
            if tid and (tid not in runs or run.info.status == "FINISHED"):
                runs[tid] = run
        token = page.token
        if not token:
            return runs


def _latest_launch(tracker: Tracker) -> str | None:
    launches = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.`bench.kind` = 'sweep'",
                                          order_by=["attributes.start_time DESC"], max_results=1)
    return launches[0].info.run_id if launches else None


def _row_dict(row: pd.Series) -> dict[str, Any]:
    return {k: (None if (not isinstance(v, (list, dict, str)) and pd.isna(v)) else v) for k, v in row.items()}


def sync_sweep(results: str, sweep: str, uri: str, artifact_location: str | None = None) -> SyncReport:
    """Give every trial of `sweep` in the store one complete MLflow run at `uri`."""
    store = ResultStore(results, sweep)
    trials = store.read_trials()
    epochs = store.read_epochs()
    tracker = Tracker(uri, sweep, artifact_location)
    existing = _existing_runs(tracker)
    parent = _latest_launch(tracker)
    if parent is None and not trials.empty:
        parent = tracker.start_sweep(sweep, "runs rebuilt from the Parquet store by bench results sync-mlflow",
                                     len(trials), 0, None)
    tracker.parent_run_id = parent
    created = completed = present = 0
    latest = trials.sort_values("finished_at").drop_duplicates("trial_id", keep="last")
    for _, series in latest.iterrows():
        row = _row_dict(series)
        tid = row["trial_id"]
        history = [_row_dict(r) for _, r in epochs[epochs["trial_id"] == tid].sort_values("epoch").iterrows()]
        run = existing.get(tid)
        if run is not None and run.info.status in TERMINAL:
            present += 1
            continue
        if run is None:
            config = {k: v for k, v in json.loads(row["config"]).items() if k != "recorded"}
            run_id = tracker.start_trial(config)
            created += 1
        else:  # started before the outage, never ended: complete it without repeating its points
            run_id = run.info.run_id
            steps = {m.step for m in tracker.client.get_metric_history(run_id, "test_acc")}
            tracker._logged_steps[run_id] = steps
            completed += 1
        if run_id is None or tracker.offline:
            raise RuntimeError(f"MLflow at {uri} stopped answering while syncing trial {tid}")
        tracker.log_history(run_id, history)
        tracker.end_trial(run_id, row)
        if tracker.offline:
            raise RuntimeError(f"MLflow at {uri} stopped answering while syncing trial {tid}")
    return SyncReport(created, completed, present)
