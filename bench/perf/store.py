"""The `store` suite: table and SQL queries over a result store of 100,000 trial rows.

Why: a researcher's store grows to thousands of trials and `bench results table` /
`bench results sql` must stay interactive (target: under 2 s at 100,000 trials).

The store is written as a sweep writes it: one Parquet file per trial through
`ResultStore.write_trial`, rows as `trial_row` builds them (config JSON included), by
a pool of processes (writing is the slow part; its time is recorded). Then:
- the queries on the one-file-per-trial layout, timed once, on a share of the files
  (opening 100,000 files one by one is what compaction is for);
- `compact_sweep` (timed);
- the queries on the compacted store, median of repeats, in this process and as
  the `bench` command a user types (Python start-up and imports included);
- the same after 1,000 more per-trial files arrive (a sweep still writing; 100 with --quick).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.perf.registry import register_suite
from bench.perf.timing import figure

MODELS = ["resnet18", "resnet50", "preact_resnet50", "alternet50", "vit_ti", "vit_s", "vit_ti_pos", "vit_s_pos",
          "swin_ti", "pit_ti"]
DATASETS = ["cifar10", "cifar100", "svhn", "spatial", "spatial_control"]
TRAIN_SIZES = [0.02, 0.1, 0.5, 1.0]
SQL_GROUP = "SELECT model, dataset, count(*) AS n, avg(test_acc) AS acc FROM trials GROUP BY ALL ORDER BY ALL"
SQL_FILTER = ("SELECT model, train_size, median(test_acc) AS acc, count(*) AS n FROM trials "
              "WHERE dataset = 'cifar100' AND status = 'ok' GROUP BY ALL ORDER BY ALL")


def synthetic_config(sweep: str, index: int, **fields: Any) -> dict[str, Any]:
    """The resolved config of trial `index` of a synthetic sweep (10 models x 5 datasets x 4 sizes x seeds)."""
    model = fields.pop("model", MODELS[index % len(MODELS)])
    dataset = fields.pop("dataset", {"name": DATASETS[(index // len(MODELS)) % len(DATASETS)]})
    train_size = fields.pop("train_size", TRAIN_SIZES[(index // (len(MODELS) * len(DATASETS))) % len(TRAIN_SIZES)])
    seed = fields.pop("seed", index // (len(MODELS) * len(DATASETS) * len(TRAIN_SIZES)))
    config = {
        "sweep": sweep, "stage": "main", "model": model, "dataset": dataset, "train_size": train_size, "seed": seed,
        "model_args": fields.pop("model_args", {}),
        "train": {"epochs": 100, "batch_size": 128, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05,
                  "schedule": "cosine", "warmup_epochs": 5, "augment": ["crop", "flip"], "label_smoothing": 0.1},
        "transfer": None, "source": None, "analysis": [], **fields,
    }
    text = json.dumps({k: v for k, v in config.items() if k != "sweep"}, sort_keys=True)
    config["trial_id"] = hashlib.sha256(text.encode()).hexdigest()[:12]
    return config


def synthetic_row(sweep: str, index: int, test_acc: float | None = None, status: str = "ok", **fields: Any) -> dict[str, Any]:
    """A trials-table row as the sweep writes it (`trial_row`), with made-up results."""
    from bench.store import trial_row

    config = synthetic_config(sweep, index, **fields)
    acc = test_acc if test_acc is not None else 0.5 + 0.4 * ((index * 2654435761) % 1000) / 1000
    start = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=index)
    result = {"n_train": 1000, "epochs": 100, "test_acc": acc, "test_loss": 1.0 - acc, "train_loss": 0.5,
              "train_acc": min(1.0, acc + 0.1), "params": 5_400_000, "flops": 730_000_000, "wall_s": 60.0,
              "train_samples_per_s": 1000.0, "device": "cpu"}
    return trial_row(config, status=status, result=result, started_at=start, finished_at=start + timedelta(seconds=60))


def _write_range(root: str, sweep: str, start: int, stop: int) -> int:
    from bench.store import ResultStore

    store = ResultStore(root, sweep)
    for i in range(start, stop):
        store.write_trial(synthetic_row(sweep, i))
    return stop - start


def write_synthetic_store(root: str | os.PathLike[str], sweep: str, n: int, start: int = 0,
                          processes: int | None = None) -> float:
    """Write trials start..start+n, one file each, with a process pool; seconds taken."""
    processes = processes or max(1, len(os.sched_getaffinity(0)))
    chunk = max(1, min(2000, n // (processes * 4) or 1))
    t0 = time.perf_counter()
    if processes == 1 or n < 500:
        _write_range(os.fspath(root), sweep, start, start + n)
    else:
        with ProcessPoolExecutor(processes) as pool:
            jobs = [pool.submit(_write_range, os.fspath(root), sweep, a, min(a + chunk, start + n))
                    for a in range(start, start + n, chunk)]
            assert sum(j.result() for j in jobs) == n
    return time.perf_counter() - t0


def _table(root: str, sweep: str) -> str:
    from bench.query import comparison_table
    from bench.store import ResultStore

    return comparison_table(ResultStore(root, sweep).read_trials(), "model", "train_size", "test_acc",
                            where="dataset == 'cifar100'")


def _sql(root: str, sql: str) -> int:
    from bench.sql import query

    return len(query(sql, root))


def _repeat(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _cli(*args: str) -> None:
    exe = Path(sys.executable).with_name("bench")
    subprocess.run([str(exe), *args], check=True, capture_output=True, text=True)


@register_suite("store", "table and SQL queries over a result store of 100,000 trials (one file per trial, compacted)")
def run(quick: bool) -> dict[str, Any]:
    n = int(os.environ.get("BENCH_PERF_STORE_TRIALS", 2_000 if quick else 100_000))
    uncompacted_share = min(n, 10_000)
    repeats = 2 if quick else 5
    cli_repeats = 1 if quick else repeats
    tmp = Path(tempfile.mkdtemp(prefix="bench-perf-store-"))
    root, sweep = str(tmp / "results"), "perf-store"
    rows: list[dict[str, Any]] = []
    try:
        write_s = write_synthetic_store(root, sweep, n)
        rows.append(figure(f"write {n:,} trial files (process pool)", [write_s], unit="s", files_per_s=n / write_s))
        # One file per trial: what a query costs before compaction, on the first share of the files.
        side = str(tmp / "side")
        share_dir = Path(side) / sweep / "trials"
        share_dir.mkdir(parents=True)
        for name in sorted(os.listdir(Path(root) / sweep / "trials"))[:uncompacted_share]:
            os.link(Path(root) / sweep / "trials" / name, share_dir / name)
        rows.append(figure(f"table, {uncompacted_share:,} uncompacted files", _repeat(lambda: _table(side, sweep), 1), unit="s"))
        rows.append(figure(f"sql group-by, {uncompacted_share:,} uncompacted files",
                           _repeat(lambda: _sql(side, SQL_GROUP), 1), unit="s"))
        t0 = time.perf_counter()
        from bench.compact import compact_sweep

        compact_sweep(root, sweep)
        rows.append(figure(f"compact {n:,} trial files", [time.perf_counter() - t0], unit="s"))
        label = f"{n:,} trials compacted"
        rows.append(figure(f"table (in process), {label}", _repeat(lambda: _table(root, sweep), repeats), unit="s"))
        rows.append(figure(f"sql group-by (in process), {label}", _repeat(lambda: _sql(root, SQL_GROUP), repeats), unit="s"))
        rows.append(figure(f"sql filter+median (in process), {label}", _repeat(lambda: _sql(root, SQL_FILTER), repeats), unit="s"))
        rows.append(figure(f"`bench results table` command, {label}", _repeat(
            lambda: _cli("results", "table", sweep, "--results", root, "--where", "dataset == 'cifar100'"), cli_repeats), unit="s"))
        rows.append(figure(f"`bench results sql` command, {label}", _repeat(
            lambda: _cli("results", "sql", SQL_GROUP, "--results", root), cli_repeats), unit="s"))
        new_files = 100 if quick else 1000
        write_synthetic_store(root, sweep, new_files, start=n)
        label = f"{n:,} compacted + {new_files:,} new files"
        rows.append(figure(f"table (in process), {label}", _repeat(lambda: _table(root, sweep), repeats), unit="s"))
        rows.append(figure(f"sql group-by (in process), {label}", _repeat(lambda: _sql(root, SQL_GROUP), repeats), unit="s"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "rows": rows,
        "ratios": {},
        "settings": {"trials": n, "uncompacted_share": uncompacted_share, "repeats": repeats,
                     "table": "model x train_size, test_acc, --where dataset == 'cifar100'",
                     "sql_group": SQL_GROUP, "sql_filter": SQL_FILTER},
    }
