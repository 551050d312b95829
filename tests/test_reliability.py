"""Failures a real cluster has: interrupted and killed drivers, a tracking outage, diverging and
out-of-memory trials, concurrent launches, and bad input. Real Ray, real MLflow, real Parquet.

(Losing a worker node of a two-node cluster is in test_submit.py, next to that cluster.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import pyarrow.fs as pafs
import yaml

from bench.cli import main
from bench.errors import BenchInputError
from bench.lock import sweep_lock
from bench.store import ResultStore
from tests.conftest import BENCH, REPO, mlflow_runs, start_mlflow_server, stop_mlflow_server

# The test-only model (tests/helpers/flaky.py) in a `bench run` subprocess and its Ray workers.
PLUGIN_ENV = {"BENCH_PLUGINS": "tests.helpers.flaky", "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""}


def slow_sweep(tmp_path: Path, name: str, epochs: list[int], sleep_s: float, **extra) -> Path:
    """Trials of flaky_net (never failing) that sleep `sleep_s` per step: one step per epoch."""
    sweep = {
        "name": name,
        "model": "flaky_net",
        "model_args": {"fail_times": 0, "sleep_s": sleep_s},
        "dataset": {"name": "spatial", "num_train": 64, "num_test": 64},
        "train_size": 64,
        "train": {"batch_size": "full", "lr": 0.01},
        "resources": {"cpus_per_trial": 1, "max_failures": 1, "report_every_s": 0},
        "grid": {"length": [{"train.epochs": e, "seed": i} for i, e in enumerate(epochs)]},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def _default_sigint() -> None:
    """In the child, before exec: Ctrl-C as a terminal gives it. A Python started with SIGINT
    ignored keeps it ignored (no KeyboardInterrupt), and the disposition is inherited from this
    pytest process: a test run started as a background job of a non-interactive shell
    (`bash -c '... &'`) starts with SIGINT ignored, as POSIX shells do for such jobs. No test
    changes it (checked over a full run: SIGINT's handler before and after every test)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(sweep: Path, results: Path, *args: str) -> subprocess.Popen:
    """`bench run` in its own process group, its output in files (a pipe nobody reads would block it)."""
    logs = Path(results).parent / f"launch-{time.monotonic_ns()}"
    proc = subprocess.Popen([BENCH, "run", str(sweep), "--results", str(results), *args], cwd=REPO,
                            env={**os.environ, **PLUGIN_ENV}, stdout=open(f"{logs}.out", "w"),
                            stderr=open(f"{logs}.err", "w"), text=True, start_new_session=True,
                            preexec_fn=_default_sigint)
    proc.logs = logs
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Wait for a launch; (exit code, stdout, stderr)."""
    proc.wait(timeout=timeout)
    return proc.returncode, Path(f"{proc.logs}.out").read_text(), Path(f"{proc.logs}.err").read_text()


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            _, out, err = finish(proc, 10)
            raise AssertionError(f"bench run ended before {what}: {out[-3000:]} {err[-3000:]}")
        if time.monotonic() > deadline:
            proc_logs = "" if proc is None else Path(f"{proc.logs}.out").read_text()[-3000:]
            raise AssertionError(f"timed out waiting for {what}: {proc_logs}")
        time.sleep(0.2)


def ignored_signals(pid: int) -> list[str]:
    """The signals a process ignores (its SigIgn mask in /proc), for a clearer failure message."""
    try:
        mask = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("SigIgn:")).split()[1], 16)
    except (OSError, StopIteration):
        return ["unknown"]
    names = {s.value: s.name for s in signal.Signals}
    return [names.get(n, str(n)) for n in range(1, 65) if mask >> (n - 1) & 1]


def ok_rows(results: Path, name: str) -> pd.DataFrame:
    folder = results / name / "trials"
    if not folder.exists():
        return pd.DataFrame(columns=["trial_id", "status"])
    return pd.read_parquet(folder)


def checkpoint_count(results: Path, name: str) -> int:
    """Trials that have a checkpoint from their second epoch on (index >= 1)."""
    found = set()
    for path in (results / name / ".tune").glob("*/*/checkpoint_*"):
        if int(path.name.split("_")[-1]) >= 1:
            found.add(path.parent.name)
    return len(found)


# ------------------------------------------------------------------------ interruption


@pytest.mark.slow
def test_ctrl_c_then_kill_then_rerun_loses_nothing_and_retrains_nothing(tmp_path):
    """Ctrl-C stops cleanly with a summary; a SIGKILLed driver leaves its checkpoints; each re-run
    resumes: finished trials are never retrained, running ones continue from their checkpoint."""
    name, results = "interrupts", tmp_path / "results"
    # The long trials must outlast the wait for the first Ctrl-C by many seconds: with warm workers
    # (Tune reuses actors) 16 epochs ended before the signal in one CI-like run.
    sweep = slow_sweep(tmp_path, name, epochs=[2, 40, 40], sleep_s=0.4)

    first = launch(sweep, results)
    wait_for(lambda: len(ok_rows(results, name)) >= 1 and checkpoint_count(results, name) >= 2, 240,
             "one trial done and one past its first epoch", first)
    ignored = ignored_signals(first.pid)
    first.send_signal(signal.SIGINT)
    code, out, err = finish(first, 120)
    assert code == 130, f"signals the launch ignored: {ignored}\n" + out[-2000:] + err[-3000:]
    summary = [line for line in err.splitlines() if line.startswith("bench: interrupted:")]
    assert len(summary) == 1 and "run the same command again to resume" in summary[0], err[-3000:]
    assert "Traceback" not in err
    done_first = ok_rows(results, name)
    finished_at = dict(zip(done_first.trial_id, done_first.finished_at))
    assert (results / name / ".tune").exists()  # checkpoints kept for the resume

    second = launch(sweep, results)
    wait_for(lambda: len(ok_rows(results, name)) > len(done_first) or checkpoint_count(results, name) >= 3, 240,
             "the second launch to make progress", second)
    os.killpg(second.pid, signal.SIGKILL)  # the driver and the Ray it started: no cleanup at all
    finish(second, 60)

    third = launch(sweep, results)
    code, out, err = finish(third, 300)
    assert code == 0, out[-3000:] + err[-3000:]

    trials = ok_rows(results, name)
    assert len(trials) == 3 and trials.trial_id.is_unique and set(trials.status) == {"ok"}
    for tid, when in finished_at.items():  # finished in the first launch: never retrained
        assert trials.set_index("trial_id").loc[tid, "finished_at"] == when
    resumed = trials[trials.resumed_from_epoch.notna()]
    assert len(resumed) >= 1 and (resumed.resumed_from_epoch >= 1).all()
    epochs = pd.read_parquet(results / name / "epochs")
    for tid, group in epochs.groupby("trial_id"):
        assert sorted(group.epoch) == list(range(1, len(group) + 1))  # each epoch once
    for tid in resumed.trial_id:
        group = epochs[epochs.trial_id == tid]
        later = group[group.attempt > 1]
        assert later.epoch.min() > 1  # continued, not restarted from epoch 0
    assert not (results / name / ".tune").exists()  # a launch that ran to its end removes them


def test_a_second_launch_of_a_running_sweep_is_refused(tmp_path):
    store = ResultStore(tmp_path, "busy")
    with sweep_lock(store.fs, store.base, "busy", is_local=True):
        with pytest.raises(BenchInputError, match="another bench run of this sweep is running"):
            with sweep_lock(store.fs, store.base, "busy", is_local=True):
                pass
    with sweep_lock(store.fs, store.base, "busy", is_local=True):  # released with the launch
        pass


def test_the_local_lock_does_not_follow_a_symlink(tmp_path):
    store = ResultStore(tmp_path, "linked")
    Path(store.base).mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    Path(store.base, ".lock").symlink_to(victim)  # whoever can write the store could plant this
    with pytest.raises(BenchInputError, match="symbolic link"):
        with sweep_lock(store.fs, store.base, "linked", is_local=True):
            pass
    assert victim.read_text() == "keep me\n"  # not truncated, not overwritten


def test_a_killed_launch_never_blocks_the_next(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import time
        from bench.lock import sweep_lock
        from bench.store import ResultStore
        store = ResultStore({str(tmp_path)!r}, "s")
        with sweep_lock(store.fs, store.base, "s", is_local=True):
            print("locked", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "locked"
    store = ResultStore(tmp_path, "s")
    with pytest.raises(BenchInputError, match=f"pid {holder.pid}"):
        with sweep_lock(store.fs, store.base, "s", is_local=True):
            pass
    holder.kill()
    holder.wait()
    with sweep_lock(store.fs, store.base, "s", is_local=True):
        pass


def test_bucket_lease_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path, monkeypatch):
    import bench.lock as lock

    fs = pafs.LocalFileSystem()  # the lease code only uses the filesystem API a bucket has
    base = str(tmp_path / "s")
    with lock.sweep_lock(fs, base, "s", is_local=False):
        with pytest.raises(BenchInputError, match="another bench run"):
            with lock.sweep_lock(fs, base, "s", is_local=False):
                pass
    assert not (tmp_path / "s" / ".lock").exists()  # released
    (tmp_path / "s" / ".lock").write_text('{"pid": 1, "host": "gone", "renewed": 0}')  # a dead driver's lease
    with lock.sweep_lock(fs, base, "s", is_local=False):
        pass


# ------------------------------------------------------------------------ tracking outage


@pytest.mark.slow
def test_mlflow_down_mid_sweep_then_sync_gives_one_run_per_trial(tmp_path):
    name, results, server_root = "outage", tmp_path / "results", tmp_path / "mlflow"
    server_root.mkdir()
    server, uri = start_mlflow_server(server_root)
    port = int(uri.rsplit(":", 1)[1])
    sweep = slow_sweep(tmp_path, name, epochs=[2, 20, 20], sleep_s=0.3)  # runs on for seconds after the kill
    try:
        proc = launch(sweep, results, "--mlflow-uri", uri, "--max-concurrent", "1")
        wait_for(lambda: len(ok_rows(results, name)) >= 1, 240, "the first trial", proc)
        stop_mlflow_server(server, signal.SIGKILL)  # the tracking server dies mid-sweep
        code, out, err = finish(proc, 300)
        assert code == 0, out[-3000:] + err[-3000:]
        assert err.count("bench: warning: MLflow") == 1, err[-3000:]  # reported once
        trials = ok_rows(results, name)
        assert len(trials) == 3 and set(trials.status) == {"ok"}

        server, uri = start_mlflow_server(server_root, port)  # back, with what it held before
        for expected_created in (None, 0):
            done = subprocess.run([BENCH, "results", "sync-mlflow", name, "--results", str(results), "--mlflow-uri", uri],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            created = int(done.stdout.split(": ", 1)[1].split(" runs created")[0])
            if expected_created is not None:
                assert created == expected_created, done.stdout  # syncing again changes nothing
            else:
                assert created >= 1, done.stdout
            children, _ = mlflow_runs(uri, name)
            tids = sorted(r.data.tags["trial_id"] for r in children)
            assert tids == sorted(trials.trial_id)  # exactly one run per trial
            assert all(r.info.status == "FINISHED" for r in children)
            assert all("test_acc" in r.data.metrics for r in children)
    finally:
        stop_mlflow_server(server, signal.SIGKILL)


# ------------------------------------------------------------------------ trials that go wrong


@pytest.mark.slow
def test_diverged_and_out_of_memory_trials_are_recorded_and_the_rest_finish(ray_local, tmp_path, capsys):
    sweep = tmp_path / "wrong.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "wrong", "model": "flaky_net", "dataset": {"name": "spatial", "num_train": 64, "num_test": 64},
        "train_size": 64, "train": {"epochs": 6, "batch_size": "full"},
        "resources": {"cpus_per_trial": 1, "max_failures": 1},
        "grid": {"case": [{"model_args": {"fail_times": 0}},
                          {"model_args": {"fail_times": 0, "nan_after": 2}},
                          {"model_args": {"fail_times": 0, "oom": True}}]},
    }))
    results = tmp_path / "results"
    assert main(["run", str(sweep), "--results", str(results)]) == 1  # the OOM trial failed
    trials = pd.read_parquet(results / "wrong" / "trials").set_index("status")
    assert sorted(trials.index) == ["diverged", "failed", "ok"]
    diverged, failed = trials.loc["diverged"], trials.loc["failed"]
    assert diverged.diverged_epoch == 3 and diverged.epochs == 3  # stopped early, with the epoch
    assert "out of memory" in failed.error and "lower train.batch_size" in failed.error
    assert failed.attempts == 2  # retried per max_failures, then recorded
    assert trials.loc["ok"].epochs == 6
    err = capsys.readouterr().err
    assert "1 of 3 trials diverged" in err and "1 of 3 trials failed" in err
    # A re-run retries the failed trial only: the diverged one finished (deterministically so).
    assert main(["run", str(sweep), "--results", str(results), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().endswith("wrong: 3 trials, 1 to run")


# ------------------------------------------------------------------------ the store


def test_a_trial_written_twice_reads_as_one_row_and_readers_skip_temporary_files(tmp_path):
    from bench.store import trial_row
    from bench.spec import parse_sweep

    config = parse_sweep({"name": "twice", "model": "resnet18"}).trials[0]
    store = ResultStore(tmp_path, "twice")
    store.write_trial(trial_row(config, status="failed", error="first attempt lost its acknowledgement"))
    store.write_trial(trial_row(config, status="ok", result={"test_acc": 0.5, "epochs": 1}))
    (tmp_path / "twice" / "trials" / f".{config['trial_id']}.abc.tmp").write_bytes(b"half a parquet file")
    rows = pd.read_parquet(tmp_path / "twice" / "trials")
    assert len(rows) == 1 and rows.status[0] == "ok"
    assert len(store.read_trials()) == 1


@pytest.mark.parametrize("sweep,trial", [("../escape", "t"), ("a/b", "t"), (".hidden", "t"), ("ok", "../../x"),
                                          ("ok", "/abs"), ("ok", "x/..")])
def test_names_cannot_escape_the_store(tmp_path, sweep, trial):
    with pytest.raises(ValueError, match="name"):
        ResultStore(tmp_path / "r", sweep).write_trial({"trial_id": trial})
    assert not any(tmp_path.rglob("*.parquet"))


# ------------------------------------------------------------------------ bad input


BAD_INPUTS = [
    ("name: x\nmodel: [resnet18\n", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("model: resnet18\n", "name: required"),
    ("name: x\nmodel: resnet18\ntrain: {epochs: three}\n", "train.epochs"),
    ("name: x\nmodle: resnet18\n", "modle: unknown key"),
    ("name: x\nmodel: resnet99\n", "unknown model 'resnet99'"),
    ("name: x\n", "no model given"),
    ("name: x\nmodel: vit_ti\nmodel_args: {widht: 3}\n", "'widht' is not an argument"),
    ("name: x\nmodel: vit_ti\nmodel_args: {depth: deep}\n", "depth of vit_ti: expected int"),
    ("name: x\nmodel: resnet18\ntrain_size: -5\n", "train_size"),
    ("name: x\nmodel: resnet18\ntrain: {epochs: -1}\n", "train.epochs"),
    ("name: x\nmodel: resnet18\ntrain: {batch_size: 0}\n", "train.batch_size: Input should be greater than 0"),
    ("name: x\nmodel: resnet18\ntrain: {lr: 0}\n", "train.lr"),
    ("name: x\nmodel: resnet18\ntrain: {optimizer: adam}\n", "train.optimizer"),
    ("name: x\nmodel: resnet18\ntrain: {augment: [rotate]}\n", "train.augment"),
    ("name: x\nmodel: resnet18\ngrid: {seed: []}\n", "an empty list gives no trials"),
    ("name: x\nmodel: resnet18\ngrid: {train.epochz: [1]}\n", "train.epochz: unknown key"),
    ("name: x\nmodel: resnet18\nseed: 1.5\n", "seed"),
    ("name: x\nmodel: resnet18\nresources: {cpus_per_trial: -1}\n", "resources.cpus_per_trial"),
    ("name: x\nmodel: resnet18\nresources: {max_failures: -2}\n", "resources.max_failures"),
    ("name: x\nmodel: resnet18\nresources: {gpus_per_trial: 1}\n", "resources.gpus_per_trial: 1: no node"),
    ("name: x\nmodel: resnet18\nresources: {cpus_per_trial: 64}\n", "resources.cpus_per_trial: 64: no node"),
    ("name: x\nmodel: resnet18\ndataset: {name: imagenet21k}\n", "unknown dataset 'imagenet21k'"),
    ("name: x\nmodel: resnet18\ndataset: {name: spatial, nmu_patches: 3}\n", "nmu_patches: unknown option"),
    ("name: x\nmodel: resnet18\ndataset: {name: cifar10, root: /nowhere/data}\n", "/nowhere/data/cifar-10-batches-py"),
    ("name: x\nmodel: resnet18\ndataset: {name: imagefolder, root: /nowhere/imgs}\n", "/nowhere/imgs/train not found"),
    ("name: x\nmodel: resnet18\nstages:\n  - {name: a}\n  - {name: b, source: c}\n", "unknown stage 'c'"),
    ("name: x\nmodel: resnet18\ntransfer: finetune\n", "needs a stage with a 'source'"),
    ("name: x\nmodel: resnet18\nanalysis: [hesian]\n", "did you mean 'hessian'"),
    ("name: ../evil\nmodel: resnet18\n", "name: "),
    ("name: x\nmodel: resnet18\nstages:\n  - {name: ../a}\n", "stages[0].name"),
]


@pytest.mark.parametrize("text,fragment", BAD_INPUTS, ids=[f"bad{i}" for i in range(len(BAD_INPUTS))])
def test_malformed_input_exits_2_with_one_line_and_writes_nothing(ray_local, tmp_path, capsys, text, fragment):
    """Everything is checked before any work: the file, every expanded trial, the data, the cluster."""
    sweep, results = tmp_path / "sweep.yaml", tmp_path / "results"
    sweep.write_text(text)
    assert main(["run", str(sweep), "--results", str(results)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: "), err
    assert fragment in lines[0] and "Traceback" not in err
    assert not results.exists()
