"""The `orchestration` suite: what Ray Tune, the store and MLflow add on top of training.

Why: sweeps are thousands of short trials; if each costs seconds of process start,
imports, scheduling and bookkeeping, the orchestration costs more than the training.
The suite runs the same N short trials two ways:

- back to back in this process (`run_trial`, one intra-op thread each, as a one-CPU Ray
  slot gives): the sum of their times over the concurrent slots is the *ideal* wall time;
- as a sweep through the real orchestrator (local Ray Tune, Parquet, local MLflow), both
  as the `bench run` command (Python start, imports, Ray start and MLflow included: what a
  user waits for) and as `run_sweep` inside this process (imports already paid).

The ratio sweep / ideal is the overhead. Where the rest goes is read from the store:
each trial's own time in its worker against the wall time between launch and last row.
The floor is Ray Tune alone running trials that sleep those same times
(`bench.perf.tune_floor`): what any tool on a fresh local Ray Tune pays; ours is the rest.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.perf.registry import register_suite
from bench.perf.timing import figure

#: A short trial: a narrow ViT on 1,024 synthetic spatial images, 9 epochs (about 5 s on one
#: core of this machine when idle, the size of trial the issue's new user timed).
TRIAL = {
    "model": "vit_ti", "model_args": {"dim": 64, "depth": 2, "heads": 2, "patch_size": 4},
    "dataset": {"name": "spatial", "num_train": 2048, "num_test": 512},
    "train": {"epochs": 9, "batch_size": 64, "warmup_epochs": 0.5},
    "train_size": 1024,
}
SLOTS = 2  # one CPU per trial on this 2-core machine


def sweep_document(name: str, trials: int) -> dict[str, Any]:
    return {"name": name, **TRIAL, "resources": {"cpus_per_trial": 1, "max_failures": 0},
            "grid": {"seed": list(range(trials))}}


def in_process_times(document: dict[str, Any]) -> list[float]:
    """Each trial's wall time, run back to back here with one intra-op thread (after one warm-up)."""
    import torch

    from bench.spec import parse_sweep
    from bench.train import run_trial

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        configs = parse_sweep(document).trials
        run_trial({**configs[0], "train": {**configs[0]["train"], "epochs": 1}}, device="cpu")  # warm caches
        times = []
        for config in configs:
            started = time.perf_counter()
            run_trial(config, device="cpu")
            times.append(time.perf_counter() - started)
        return times
    finally:
        torch.set_num_threads(threads)


def _launch_wall(argv: list[str]) -> float:
    """A launch's wall time, Python start to exit, on a local Ray of its own (not one this
    process may have started)."""
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    return time.perf_counter() - started


def command_wall(sweep_file: Path, results: Path) -> float:
    """`bench run` as a user runs it."""
    return _launch_wall([str(Path(sys.executable).with_name("bench")), "run", str(sweep_file), "--results", str(results)])


def bare_tune_wall(times: list[float], storage: Path) -> float:
    """The same trials as sleeps through Ray Tune alone (`bench.perf.tune_floor`)."""
    import json

    return _launch_wall([sys.executable, "-m", "bench.perf.tune_floor", json.dumps(times), str(storage), str(SLOTS)])


def in_process_sweep_wall(document: dict[str, Any], results: Path) -> float:
    import io

    from bench.spec import parse_sweep
    from bench.sweep import run_sweep

    sweep = parse_sweep(document)
    started = time.perf_counter()
    outcome = run_sweep(sweep, str(results), out=io.StringIO())
    wall = time.perf_counter() - started
    assert outcome.ok == len(sweep.trials), f"{outcome.ok} of {len(sweep.trials)} trials ok"
    return wall


def worker_seconds(results: Path, name: str) -> float:
    """The trials' own time in their workers (data, model, training, evaluation), from the store."""
    from bench.store import ResultStore

    trials = ResultStore(str(results), name).read_trials()
    assert (trials["status"] == "ok").all() and len(trials), trials[["trial_id", "status", "error"]]
    return float(trials["wall_s"].sum())


@register_suite("orchestration", "N short trials through Ray Tune + store + MLflow vs back to back in one process")
def run(quick: bool) -> dict[str, Any]:
    n = 4 if quick else 16
    document = sweep_document("perf-orchestration", n)
    if quick:  # a smoke run: shorter trials
        document["train"] = {**document["train"], "epochs": 2}
    repeats = 1 if quick else 2
    times = in_process_times(document)
    ideal = sum(times) / SLOTS
    rows = [figure("one trial, in process (1 thread)", times, unit="s"),
            figure(f"ideal: sum of {n} trials / {SLOTS} slots", [ideal], unit="s")]
    commands, in_process, workers, floors = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            folder = Path(tmp) / f"cli{r}"
            folder.mkdir()
            sweep_file = folder / "sweep.yaml"
            sweep_file.write_text(yaml.safe_dump(document))
            commands.append(command_wall(sweep_file, folder / "results"))
            workers.append(worker_seconds(folder / "results", document["name"]))
            in_process.append(in_process_sweep_wall(document, Path(tmp) / f"inproc{r}" / "results"))
            floors.append(bare_tune_wall(times, Path(tmp) / f"floor{r}"))
    rows += [figure(f"`bench run` command, {n} trials", commands, unit="s"),
             figure(f"run_sweep in process, {n} trials", in_process, unit="s"),
             figure(f"sum of the trials' own time in their Ray workers, {n} trials", workers, unit="s"),
             figure(f"Ray Tune alone: {n} trials sleeping those in-process times (the floor)", floors, unit="s")]
    command, sweep_wall, floor = statistics.median(commands), statistics.median(in_process), statistics.median(floors)
    return {
        "rows": rows,
        "ratios": {"command / ideal": command / ideal, "run_sweep / ideal": sweep_wall / ideal,
                   "Ray Tune alone / ideal": floor / ideal, "command / Ray Tune alone": command / floor,
                   "trial time in Ray workers / in process": statistics.median(workers) / sum(times)},
        "settings": {"trials": n, "slots": SLOTS, "trial": TRIAL, "repeats": repeats,
                     "target": "command / ideal <= 1.10"},
    }
