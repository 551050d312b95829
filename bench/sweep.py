"""Ray Tune orchestration: the only module that knows Ray.

One launch = one `tune.Tuner` over the sweep's pending trials (those without an `ok`
row in the store, unless `fresh`). Each Tune trial calls `bench.train.run_trial`,
reports every epoch with a checkpoint, and is retried from its last checkpoint up to
`resources.max_failures` times. Results reach the Parquet store and MLflow from the
driver, in Tune callbacks, as each trial finishes: a crash later in the sweep never
loses a finished trial.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

# Our store and progress lines replace Tune's own loggers and console output.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Ctrl-C is ours: Tune's handler would end fit() quietly and leave its handler installed
# for the next stage; a KeyboardInterrupt stops the launch where it is (checkpoints kept).
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")

import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from bench import data as data_registry  # noqa: E402
from bench import plugins, storage, tuning  # noqa: E402
from bench.lock import sweep_lock  # noqa: E402
from bench.errors import BenchInputError, DataUnavailable  # noqa: E402
from bench.spec import SINGLE_STAGE, Sweep  # noqa: E402
from bench.store import ResultStore, UnusableCheckpoint, load_checkpoint_state, now_utc, trial_row  # noqa: E402
from bench.tracking import BackgroundTracker, Tracker, check_reachable, resolve_tracking  # noqa: E402
from bench.train import run_trial  # noqa: E402

STATE_FILE = "state.pt"
EPOCH_LINE_EVERY_S = 30.0  # a running trial's progress line, at most this often
FINAL_KEY = "bench_final"


@dataclass
class SweepOutcome:
    total: int
    skipped: int
    ok: int
    failed: int
    diverged: int = 0


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the launch; the message says what is saved and how to resume."""


# ------------------------------------------------------------------------ the trial


def trial_config(tune_config: dict[str, Any]) -> dict[str, Any]:
    """The bench trial config of a Tune trial: the planned one, with a searcher's sampled values
    applied (optuna samples them at run time; random samples are planned into the config)."""
    keys = tune_config.get("searched") or []
    if not keys:
        return tune_config["trial"]
    values = {tuning.decode(k): tune_config[k] for k in keys}
    return tuning.apply_values(tune_config["trial"], values, tuned=values)


def members(tune_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The bench trials a Tune trial runs: one, or a stack of seeds (`resources.stack_seeds`)."""
    if "stack" in tune_config["trial"]:
        return tune_config["trial"]["stack"]
    return [trial_config(tune_config)]


def tune_trial_name(tune_config: dict[str, Any]) -> str:
    """The Tune trial's folder name: the trial id, or the first member's id for a stack."""
    if "stack" in tune_config["trial"]:
        return f"stack-{tune_config['trial']['stack'][0]['trial_id']}"
    return trial_config(tune_config)["trial_id"]


def _tune_trainable(param_space: dict[str, Any]) -> None:
    """Runs inside a Ray worker: one trial, resumed from its last checkpoint if retried."""
    plugins.load()  # a fresh worker process: users' own models must be registered here too
    torch.set_num_threads(max(1, int(param_space["cpus"])))
    if 0 < param_space["gpus"] < 1 and torch.cuda.is_available():  # a share of a GPU: at most that share of its memory
        torch.cuda.set_per_process_memory_fraction(float(param_space["gpus"]))
    if "stack" in param_space["trial"]:
        _run_stack(param_space)
        return
    config = trial_config(param_space)
    store = ResultStore(param_space["results"], config["sweep"])
    resume, refused = None, None
    try:  # checkpoints are plain tensors and values (weights_only): a planted or damaged one is never resumed from
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a retry within this launch
            with checkpoint.as_directory() as folder:
                path = Path(folder) / STATE_FILE
                resume = load_checkpoint_state(path.read_bytes(), f"{config['trial_id']}/{STATE_FILE}")
        elif not param_space.get("fresh"):  # a launch that was killed or interrupted left one behind
            path = store.latest_checkpoint(config["trial_id"], STATE_FILE)
            if path is not None:
                resume = store.read_checkpoint(path)
    except (UnusableCheckpoint, OSError) as exc:
        refused = f"checkpoint refused, trial trained from the start: {str(exc)[:300]}"
        print(f"bench: warning: {config['trial_id']}: {refused}", file=sys.stderr, flush=True)

    # Report (with a checkpoint) at most every `report_every_s` seconds, and after the last
    # epoch: a 10^4-epoch full-batch run must not spend its time writing checkpoints.
    every_s, last_epoch = param_space.get("report_every_s", 0.0), config["train"]["epochs"]
    last_report = [float("-inf")]

    def on_epoch(row: dict[str, Any], get_state) -> None:
        now = time.monotonic()
        if row["epoch"] != last_epoch and now - last_report[0] < every_s:
            return
        last_report[0] = now
        with tempfile.TemporaryDirectory() as folder:
            torch.save(_plain(get_state()), Path(folder) / STATE_FILE)
            tune.report(dict(row), checkpoint=tune.Checkpoint.from_directory(folder))

    source_state = None
    if config.get("source") and config.get("transfer") != "scratch":
        source_state = store.read_model(config["source"])
    device = storage.trial_device(param_space["gpus"])  # the GPU Ray assigned, if any
    try:
        result = run_trial(config, on_epoch=on_epoch, resume=resume, device=device, source_state=source_state)
    except torch.OutOfMemoryError as exc:
        train = config["train"]
        raise RuntimeError(
            f"out of memory on {device} ({config['model']}, batch_size {train['batch_size']}): "
            f"{str(exc).splitlines()[0] if str(exc) else 'allocation failed'}; lower train.batch_size or give "
            "each trial more memory (resources.gpus_per_trial)") from None
    if refused:  # kept with the trial's row (config.recorded), and printed by the driver
        result["recorded"] = {**(result.get("recorded") or {}), "checkpoint_refused": refused}
    last = result["history"][-1] if result["history"] else {}
    tune.report({**last, FINAL_KEY: json.dumps(result)})  # the last epoch's metrics too: searchers read them


def _plain(value: Any) -> Any:
    """A checkpoint state with numpy scalars as Python numbers: it must load with weights_only=True."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _run_stack(param_space: dict[str, Any]) -> None:
    """K seeds as one vmapped model (bench.stacking); one result per seed. A stack keeps no
    checkpoint: a retried stack trains again from the start (stacks are for short trials)."""
    from bench.stacking import run_stacked

    results = run_stacked(param_space["trial"]["stack"], device=storage.trial_device(param_space["gpus"]))
    tune.report({FINAL_KEY: json.dumps(results)})


def stack_groups(trials: list[dict[str, Any]], k: int, keep_weights: set[str] | frozenset[str]) -> list[dict[str, Any]]:
    """Trials as Tune trials: seeds of otherwise equal stackable trials in stacks of up to `k`,
    the rest alone. Not stacked: batch-norm families, drop-path, analyses, transfer, and
    trials whose weights a later stage needs (stacks keep no checkpoint)."""
    from bench.stacking import can_stack, stack_key

    if k <= 1:
        return list(trials)
    groups: dict[str, list[dict[str, Any]]] = {}
    out: list[dict[str, Any]] = []
    for t in trials:
        if can_stack(t) and t["stage"] not in keep_weights:
            groups.setdefault(stack_key(t), []).append(t)
        else:
            out.append(t)
    for group in groups.values():
        for start in range(0, len(group), k):
            chunk = group[start : start + k]
            out.append({"stack": chunk} if len(chunk) > 1 else chunk[0])
    return out



# ----------------------------------------------------------------- driver callbacks


class Progress:
    """One line per finished/failed/retried trial, with counts and an ETA."""

    def __init__(self, total: int, concurrency: int, out: TextIO | None = None):
        # Tune pickles its callbacks with the experiment state: keep streams out of them.
        self.total, self.concurrency = total, max(1, concurrency)
        self._out = out
        self.ok = self.failed = self.diverged = self.running = 0
        self.durations: list[float] = []
        self.started = time.monotonic()
        self.last_epoch_line: dict[str, float] = {}
        self.latest_epoch: dict[str, int] = {}  # per running trial: its last reported (checkpointed) epoch

    @property
    def done(self) -> int:
        return self.ok + self.failed + self.diverged

    def eta(self) -> str:
        remaining = self.total - self.done
        if not self.durations or remaining <= 0:
            return "-"
        return _duration(sum(self.durations) / len(self.durations) * remaining / self.concurrency)

    def epoch(self, config: dict[str, Any], result: dict[str, Any], every_s: float = EPOCH_LINE_EVERY_S) -> None:
        """A running trial's epoch, accuracy and ETA, at most every `every_s` per trial: a long
        trial must not look hung, and short ones stay quiet."""
        tid, now = config["trial_id"], time.monotonic()
        self.latest_epoch[tid] = int(result["epoch"])
        if now - self.last_epoch_line.get(tid, self.started) < every_s:
            return
        self.last_epoch_line[tid] = now
        epochs, epoch = config["train"]["epochs"], int(result["epoch"])
        left = result["wall_s"] / max(1, epoch) * (epochs - epoch)
        self.line("epoch", config, f"epoch {epoch}/{epochs} {_headline(result)} "
                                   f"train_loss={result['train_loss']:.3f}, trial ETA {_duration(left)}")

    def line(self, event: str, config: dict[str, Any], detail: str) -> None:
        done = self.done
        label = f"{config['model']} {config['dataset']['name']} train_size={config['train_size']} seed={config['seed']}"
        print(
            f"[{done:>{len(str(self.total))}}/{self.total}] {event:<6} {config['trial_id']} {label}  {detail}"
            f"  | running {self.running}, failed {self.failed}{f', diverged {self.diverged}' if self.diverged else ''}, "
            f"ETA {self.eta()}",
            file=self._out or sys.stdout, flush=True,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_out": None}


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class StoreCallback(tune.Callback):
    """Writes each finished trial to Parquet and MLflow the moment Tune reports it."""

    def __init__(self, store: ResultStore, tracker: BackgroundTracker | None, progress: Progress,
                 keep_weights: set[str] | frozenset[str] = frozenset()):
        self.store, self.tracker, self.progress = store, tracker, progress
        self.keep_weights = set(keep_weights)  # stages whose final weights a later stage starts from
        self.run_ids: dict[str, str | None] = {}
        self.started_at: dict[str, Any] = {}
        self.attempts: dict[str, int] = {}
        self.reports: dict[str, dict[int, dict[str, Any]]] = {}  # the epochs a trial reported (for stopped trials)

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment state; the tracker's thread and its
        pending run handles do not pickle (and a restored experiment gets a new callback)."""
        return {**self.__dict__, "tracker": None, "run_ids": {}}

    def on_trial_start(self, iteration, trials, trial, **info):
        for config in members(trial.config):
            tid = config["trial_id"]
            self.started_at.setdefault(tid, now_utc())
            self.attempts[tid] = self.attempts.get(tid, 0) + 1
            if tid not in self.run_ids:
                self.run_ids[tid] = self.tracker.start_trial(config) if self.tracker else None
            self.progress.running += 1

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if FINAL_KEY in result or "epoch" not in result or "stack" in trial.config["trial"]:
            return
        config = trial_config(trial.config)
        self.reports.setdefault(config["trial_id"], {})[int(result["epoch"])] = {
            k: result.get(k) for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss",
                                       "val_acc", "lr", "wall_s", "attempt") if k in result}
        self.progress.epoch(config, result)
        if self.tracker:
            self.tracker.log_epoch(self.run_ids.get(config["trial_id"]), result)

    def on_trial_recover(self, iteration, trials, trial, **info):
        for config in members(trial.config):
            self.progress.running -= 1
            self.progress.line("retry", config, f"attempt {self.attempts[config['trial_id']]} failed: {_error_line(trial)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if "stack" in trial.config["trial"]:
            for config, result in zip(members(trial.config), json.loads(trial.last_result[FINAL_KEY])):
                self._record(config, result, trial)
            return
        config = trial_config(trial.config)
        if FINAL_KEY not in trial.last_result:  # a scheduler (ASHA) stopped it early
            result = self._stopped_result(config["trial_id"], trial.last_result, config["train"]["epochs"])
        else:
            result = json.loads(trial.last_result[FINAL_KEY])
        self._record(config, result, trial)

    def _record(self, config: dict[str, Any], result: dict[str, Any], trial) -> None:
        """A finished trial's rows: epochs, analysis, weights (if a later stage needs them), then its trial row."""
        tid = config["trial_id"]
        self.reports.pop(tid, None)
        if (result.get("recorded") or {}).get("checkpoint_refused"):  # the worker's warning, where the user sees it
            print(f"bench: warning: {tid}: {result['recorded']['checkpoint_refused']}", file=sys.stderr, flush=True)
        status = result.get("status", "ok")
        error = f"diverged: train_loss not finite at epoch {result['diverged_epoch']}" if status == "diverged" else None
        row = trial_row(config, status=status, result=result, error=error,
                        mlflow_run_id=BackgroundTracker.run_id(self.run_ids.get(tid)),
                        started_at=self.started_at.get(tid), attempts=self.attempts.get(tid, 1))
        self.store.write_epochs(tid, result["history"])
        self.store.write_analysis(tid, result.get("analysis") or [])
        if status == "ok" and config["stage"] in self.keep_weights:  # before the ok row: an ok source has its weights
            weights = self._final_weights(trial)
            self.store.write_model(tid, weights)
            if self.tracker:
                self.tracker.log_weights(self.run_ids.get(tid), tid, weights)
        self.store.write_trial(row)
        if self.tracker:
            self.tracker.log_history(self.run_ids.get(tid), result["history"])
            self.tracker.end_trial(self.run_ids.get(tid), row)
        self.progress.running -= 1
        self.progress.latest_epoch.pop(tid, None)
        self.progress.durations.append(result["wall_s"])
        if status == "diverged":
            self.progress.diverged += 1
            self.progress.line("DIVERGED", config, f"{error} ({result['wall_s']:.1f}s)")
        else:
            self.progress.ok += 1
            self.progress.line(status, config, f"{_headline(result)} ({result['wall_s']:.1f}s)")

    def _stopped_result(self, tid: str, last: dict[str, Any], epochs: int) -> dict[str, Any]:
        """What a stopped trial reached: its reported epochs (reports are per epoch under a scheduler).
        ASHA also 'stops' a trial at its last epoch (max_t): that one ran to its end, it is ok."""
        history = [self.reports.get(tid, {})[e] for e in sorted(self.reports.get(tid, {}))]
        reached = int(last.get("epoch", 0))
        return {"status": "ok" if reached >= epochs else "stopped", "epochs": reached, "history": history, "analysis": [],
                **{k: last.get(k) for k in ("train_loss", "train_acc", "val_acc", "val_loss", "test_acc", "test_loss")},
                "wall_s": float(last.get("wall_s") or 0.0)}

    @staticmethod
    def _final_weights(trial) -> dict[str, Any]:
        """The model state of the trial's last checkpoint (its last epoch is always reported with one)."""
        with trial.checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)["model"]

    def record_failure(self, config: dict[str, Any], error: str) -> None:
        """A trial that could not run at all (its source failed): a `failed` row, no Tune trial."""
        row = trial_row(config, status="failed", error=error, attempts=0)
        self.store.write_trial(row)
        self.progress.failed += 1
        self.progress.line("FAILED", config, error)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _error_text(trial)
        for config in members(trial.config):
            tid = config["trial_id"]
            row = trial_row(config, status="failed", error=error,
                            mlflow_run_id=BackgroundTracker.run_id(self.run_ids.get(tid)),
                            started_at=self.started_at.get(tid), attempts=self.attempts.get(tid, 1))
            self.store.write_trial(row)
            if self.tracker:
                self.tracker.end_trial(self.run_ids.get(tid), row)
            self.progress.running -= 1
            self.progress.latest_epoch.pop(tid, None)
            self.reports.pop(tid, None)
            self.progress.failed += 1
            self.progress.line("FAILED", config, _error_line(trial))


def _headline(result: dict[str, Any]) -> str:
    for key in ("test_acc", "val_acc"):
        if result.get(key) is not None:
            return f"{key}={result[key]:.3f}"
    return f"epochs={result.get('epochs')}"


def _error_text(trial) -> str:
    """The trial's latest failure: Tune appends every failure to the trial's local error file."""
    path = trial.error_file
    text = Path(path).read_text() if path and Path(path).exists() else str(trial.get_error() or "")
    latest = re.split(r"^Failure # \d+ \(occurred at [^)]*\)\n", text, flags=re.M)[-1].strip()
    return latest or "trial failed (no error recorded)"


def _error_line(trial) -> str:
    lines = [line.strip() for line in _error_text(trial).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error"


# ------------------------------------------------------------------------ the driver


def pending_trials(sweep: Sweep, store: ResultStore, fresh: bool) -> list[dict[str, Any]]:
    """Trials without a finished row (ok, diverged, stopped); all of them with `fresh`."""
    done = set() if fresh else store.finished_trial_ids()
    return [t for t in sweep.trials if t["trial_id"] not in done]


def preflight(trials: list[dict[str, Any]], source: str | None = None) -> None:
    """Bad input must fail before anything is written: check every dataset is on disk (or may be fetched)."""
    seen = set()
    for trial in trials:
        key = json.dumps(trial["dataset"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            try:
                data_registry.check_available(trial["dataset"])
            except DataUnavailable as exc:
                raise DataUnavailable(f"{source or 'sweep'}: dataset: {exc}") from None


def _absolute(results_dir: str | os.PathLike[str]) -> str:
    """The store's root as workers must see it: a bucket URI as is, a local folder made absolute."""
    text = storage.without_credentials(os.fspath(results_dir))  # Tune persists its param space: no secrets
    return text if "://" in text else str(Path(text).resolve())


def _ready_to_run(trials: list[dict[str, Any]], store: ResultStore, callback: "StoreCallback") -> list[dict[str, Any]]:
    """A stage's trials that can start: a downstream trial whose source did not finish ok is
    recorded `failed` with that reason; a source whose weights went missing is bad input."""
    if not any(t["source"] for t in trials):
        return trials
    ok = store.ok_trial_ids()
    runnable = []
    for trial in trials:
        source = trial["source"]
        if source and source not in ok:
            callback.record_failure(trial, f"source trial {source} did not finish ok, so this transfer did not run")
            continue
        if source and trial["transfer"] != "scratch" and not store.has_model(source):
            raise BenchInputError(f"stage {trial['stage']}: the weights of source trial {source} are missing "
                                  f"(expected {store.model_path(source)}); rerun its stage with --fresh")
        runnable.append(trial)
    return runnable


def _import_mlflow() -> None:
    try:
        import mlflow.tracking  # noqa: F401
    except Exception:  # the tracker reports MLflow problems where it is created
        pass


def connect_ray(address: str | None) -> bool:
    """Join `address` (or RAY_ADDRESS), reuse a running ray, or start a local one; True if we started it."""
    # Tune warns that it finds no result.json: our store replaces its loggers on purpose.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **quiet)
    else:
        ray.init(include_dashboard=False, **quiet)
    return True


def run_sweep(
    sweep: Sweep,
    results_dir: str | os.PathLike[str] = "results",
    mlflow_uri: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    fresh: bool = False,
    out: TextIO | None = None,
) -> SweepOutcome:
    """Run the sweep's pending trials on Ray Tune; results go to the store and MLflow as they finish.

    One launch per sweep at a time (a second is refused, exit 2). Ctrl-C or SIGTERM stops
    the launch, keeps every running trial's last checkpoint, and raises SweepInterrupted:
    the same command again skips finished trials and continues the others from there.
    """
    location = storage.resolve_results(results_dir)  # a folder or a bucket; Tune's checkpoints follow it
    store = ResultStore(results_dir, sweep.name)
    pending = pending_trials(sweep, store, fresh)
    skipped = len(sweep.trials) - len(pending)
    if not pending:
        print(f"{sweep.name}: all {len(sweep.trials)} trials already have results (use --fresh to rerun)",
              file=out or sys.stdout)
        return SweepOutcome(len(sweep.trials), skipped, 0, 0)
    preflight(pending, sweep.source_path)
    storage.check_tracking(location, mlflow_uri)
    uri, artifact_location = resolve_tracking(results_dir, mlflow_uri)
    check_reachable(uri)

    threading.Thread(target=_import_mlflow, daemon=True).start()  # seconds of imports, while Ray starts
    started_ray = connect_ray(address)
    try:  # shared storage, a tracking server, a node that fits a trial: before anything is written
        storage.check_cluster(location, uri, sweep.resources.cpus_per_trial, sweep.resources.gpus_per_trial)
    except BenchInputError:
        if started_ray:
            ray.shutdown()
        raise
    try:
        with sweep_lock(store.fs, store.base, sweep.name, location.is_local), _sigterm_interrupts():
            pending = pending_trials(sweep, store, fresh)  # again, under the lock: a launch may just have ended
            return _launch(sweep, store, location, pending, len(sweep.trials) - len(pending), uri,
                           artifact_location, results_dir, max_concurrent, fresh, out)
    finally:
        if started_ray:
            ray.shutdown()


def _launch(sweep: Sweep, store: ResultStore, location: storage.ResultsLocation, pending: list[dict[str, Any]],
            skipped: int, uri: str, artifact_location: str | None, results_dir: str | os.PathLike[str],
            max_concurrent: int | None, fresh: bool, out: TextIO | None) -> SweepOutcome:
    """The stages of one launch, in order, under the sweep's lock."""
    tracker = BackgroundTracker(lambda: Tracker(uri, sweep.name, artifact_location))  # off the Tune loop's path
    tracker.start_sweep(sweep.name, sweep.description, len(sweep.trials), len(pending), sweep.source_path)
    res = sweep.resources
    concurrency = max_concurrent or res.max_concurrent
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    total = len(pending) if sweep.tune is None else len(sweep.cells) * sweep.tune.num_samples + len(sweep.trials)
    progress = Progress(total, concurrency or max(1, int(cluster_cpus // res.cpus_per_trial)), out)
    what = (f"{len(pending)} trials to run ({skipped} already done)" if sweep.tune is None else
            f"{len(sweep.cells)} searches of {sweep.tune.num_samples} trials, then {len(sweep.trials)} final trials")
    print(
        f"{sweep.name}: {what} on Ray "
        f"({cluster_cpus:g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs); results in {store.base}",
        file=out or sys.stdout, flush=True,
    )
    callback = StoreCallback(store, tracker, progress, keep_weights=sweep.source_stages)
    tune_root, tune_filesystem = location.tune_storage(sweep.name)
    launch = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    trainable = tune.with_resources(_tune_trainable, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    common = {"cpus": res.cpus_per_trial, "gpus": res.gpus_per_trial, "report_every_s": res.report_every_s,
              "results": _absolute(results_dir),  # trials run in their own working dirs
              "fresh": fresh}  # --fresh: never continue from an earlier launch's checkpoint

    def fit(name: str, param_space: dict[str, Any], **tune_options: Any) -> None:
        tune.Tuner(
            trainable,
            param_space={**common, **param_space},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrency,
                # A finished trial's worker process (torch and the zoo imported, caches warm) runs the
                # next trial instead of a new process being started for it: seconds per trial.
                reuse_actors=True,
                trial_dirname_creator=lambda trial: tune_trial_name(trial.config),
                trial_name_creator=lambda trial: tune_trial_name(trial.config),
                **tune_options,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=tune_root,
                storage_filesystem=tune_filesystem,
                failure_config=tune.FailureConfig(max_failures=res.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[callback],
                verbose=0,
            ),
        ).fit()

    interrupted = True
    try:
        if sweep.tune is not None:
            _run_tuned(sweep, store, fit, launch, fresh, progress)
        for stage in ([] if sweep.tune is not None else sweep.stages):  # in order: sources finish first
            runnable = _ready_to_run([t for t in pending if t["stage"] == stage], store, callback)
            if runnable:
                fit(launch if sweep.stages == [SINGLE_STAGE] else f"{launch}-{stage}",
                    {"trial": tune.grid_search(stack_groups(runnable, res.stack_seeds, sweep.source_stages))})
        interrupted = False
    except KeyboardInterrupt:
        raise SweepInterrupted(_interrupted_summary(sweep, store, progress)) from None
    finally:
        tracker.end_sweep(progress.ok, progress.failed)
        tracker.close()  # every queued MLflow call done: the launch's runs are finished
        if not interrupted:  # checkpoints are for retries and resumes, not results
            location.remove_tree(tune_root)
    return SweepOutcome(progress.total if sweep.tune is not None else len(sweep.trials), skipped, progress.ok,
                        progress.failed, progress.diverged)


# ------------------------------------------------------------------- tuned sweeps


def _search_rows(store: ResultStore, cell_id: str) -> list[dict[str, Any]]:
    """The cell's finished search trials in the store (ok or stopped by the scheduler)."""
    trials = store.read_trials()
    if trials.empty or "phase" not in trials:
        return []
    mine = trials[(trials["phase"] == "search") & (trials["tune_cell"] == cell_id)
                  & trials["status"].isin(("ok", "stopped"))]
    return [{k: (None if v is None or (isinstance(v, float) and v != v) else v) for k, v in row.items()}
            for row in mine.to_dict("records")]


def _run_tuned(sweep: Sweep, store: ResultStore, fit, launch: str, fresh: bool, progress: Progress) -> None:
    """Each cell's search (a Tune run with the sweep's searcher and scheduler), then every cell's
    final trials with the best values it found (one Tune run)."""
    spec = sweep.tune
    metric, mode = spec.metric, spec.mode or tuning.SEARCH_METRICS[spec.metric]
    done = set() if fresh else store.finished_trial_ids()
    searching = {"report_every_s": 0.0} if spec.scheduler else {}  # a scheduler decides on every epoch
    for cell in sweep.cells:
        options: dict[str, Any] = {}
        if spec.scheduler is not None:
            options["scheduler"] = tune.schedulers.ASHAScheduler(
                time_attr="epoch", metric=metric, mode=mode, max_t=max(1, cell.template["train"]["epochs"]),
                grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor)
        if spec.algorithm == "random":
            planned = [tuning.search_config(cell, spec, v) for v in tuning.random_samples(spec, sweep.name, cell)]
            todo = [c for c in planned if c["trial_id"] not in done]
            if todo:
                fit(f"{launch}-search-{cell.id}", {"trial": tune.grid_search(todo), **searching}, **options)
        else:
            finished = [] if fresh else _search_rows(store, cell.id)
            remaining = spec.num_samples - len(finished)
            if remaining > 0:
                from ray.tune.search.optuna import OptunaSearch

                scored = [r for r in finished if r.get(metric) is not None]
                points = [{tuning.encode(k): v for k, v in json.loads(r["config"])["tuned"].items()} for r in scored]
                searcher = OptunaSearch(
                    space=tuning.optuna_distributions(spec), metric=metric, mode=mode,
                    seed=spec.seed + len(finished),  # a resumed study must not redraw its first random points
                    points_to_evaluate=points or None, evaluated_rewards=[r[metric] for r in scored] or None)
                base = tuning.search_config(cell, spec, {})
                fit(f"{launch}-search-{cell.id}",
                    {"trial": base, "searched": [tuning.encode(k) for k in spec.space], **searching},
                    search_alg=searcher, num_samples=remaining, **options)
    finals = []
    for cell in sweep.cells:
        best = tuning.select_best(_search_rows(store, cell.id), spec)
        if best is None:
            print(f"{sweep.name}: cell {cell.label}: no search trial finished with {metric}; its final trials "
                  "did not run", file=progress._out or sys.stdout, flush=True)
            continue
        finals += [tuning.final_config(m, best.values, best.trial_id, best.budget, cell.id) for m in cell.members]
    todo = [c for c in finals if c["trial_id"] not in done]
    if todo:
        fit(f"{launch}-final", {"trial": tune.grid_search(todo)})


def _interrupted_summary(sweep: Sweep, store: ResultStore, progress: Progress) -> str:
    finished = len(store.finished_trial_ids() & {t["trial_id"] for t in sweep.trials})
    running = sorted(progress.latest_epoch.values())
    saved = (f"; {len(running)} running trial(s) keep their last checkpoint (epoch {', '.join(map(str, running))})"
             if running else "")
    return (f"interrupted: {finished} of {len(sweep.trials)} trials of {sweep.name} have results in {store.base} "
            f"({progress.done} from this launch){saved}; run the same command again to resume")


class _sigterm_interrupts:
    """SIGTERM (a pod being stopped, `kill`) stops a launch the way Ctrl-C does."""

    def __enter__(self):
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False
