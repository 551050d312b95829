"""The command line as users run it: exit codes, one-line errors, nothing half-written.

Most cases call `bench.cli.main` in this process (`run_main`: the same code the installed
command runs, without seconds of start-up each); the tests marked "installed" run the
`bench` command itself in a subprocess, so both paths are shown to agree.
"""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO, run_cli, run_main

QUICKSTART = str(REPO / "sweeps" / "quickstart.yaml")


def write(tmp_path, text: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


def assert_bad_input(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bench: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("name: x\nmodel: resnet99\n", ["grid" if False else "model", "unknown model 'resnet99'"]),
        ("name: x\nmodel: resnet18\ntrain: {epocs: 3}\n", ["train.epocs: unknown key", "did you mean 'epochs'"]),
        ("name: x\nmodel: resnet18\ngrid: {model: [vit_ti, vitti]}\n", ["grid.model", "'vitti'"]),
        ("name: x\nmodel: [resnet18\n", ["not valid YAML"]),
        ("name: x\nmodel: resnet18\ndataset: {name: imagenet21k}\n", ["unknown dataset 'imagenet21k'"]),
    ],
)
def test_bad_sweep_files_exit_2_with_one_line_and_write_nothing(tmp_path, text, fragments):
    results = tmp_path / "results"
    proc = run_main("run", write(tmp_path, text), "--results", str(results))
    assert_bad_input(proc, "sweep.yaml", *fragments)
    assert not results.exists()


def test_missing_sweep_file_installed_command(tmp_path):
    assert_bad_input(run_cli("run", "missing.yaml", cwd=tmp_path), "missing.yaml: no such sweep file")


def test_bad_flag_installed_command(tmp_path):
    assert_bad_input(run_cli("run", QUICKSTART, "--set", "train.epochz=3", cwd=tmp_path), "train.epochz: unknown key")


@pytest.mark.parametrize("args,fragment", [
    (["run", QUICKSTART, "--max-concurrent", "many"], "--max-concurrent"),
    (["run", QUICKSTART, "--bogus"], "unrecognized arguments: --bogus"),
    (["run", QUICKSTART, "--set", "train.epochs"], "expected KEY=VALUE"),
    (["run", QUICKSTART, "--set", "train.epochz=3"], "train.epochz: unknown key"),
    (["frobnicate"], "invalid choice"),
    (["results", "table", "no-such-sweep", "--results", "nowhere"], "no results under nowhere/no-such-sweep"),
])
def test_bad_flags_exit_2(tmp_path, args, fragment):
    assert_bad_input(run_main(*args, cwd=tmp_path), fragment)


def test_validate_prints_the_trial_count():
    proc = run_main("validate", QUICKSTART)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "quickstart: 12 trials (resnet18, vit_ti, vit_ti_pos)"


def test_dry_run_lists_trials_and_writes_nothing(tmp_path):
    proc = run_main("run", QUICKSTART, "--dry-run", "--results", str(tmp_path / "r"), "--set", "grid.seed=[0]")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 7 and all(line.startswith("run ") for line in lines[:6])
    assert lines[-1] == "quickstart: 6 trials, 6 to run"
    assert not (tmp_path / "r").exists()


def test_results_ls_on_an_empty_store(tmp_path):
    proc = run_main("results", "ls", "--results", str(tmp_path))
    assert proc.returncode == 0 and "no sweeps" in proc.stdout


def test_results_ls_counts_each_status_and_a_sweep_with_no_finished_trial(tmp_path):
    from bench.perf.store import synthetic_row
    from bench.store import ResultStore

    store = ResultStore(tmp_path, "mixed")
    for i, status in enumerate(["ok", "ok", "failed", "diverged", "stopped", "stopped"]):
        store.write_trial(synthetic_row("mixed", i, status=status))
    (tmp_path / "started" / "trials").mkdir(parents=True)  # a launch that has not finished a trial yet
    proc = run_main("results", "ls", "--results", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("mixed: 2 ok, 1 failed, 1 diverged, 2 stopped, last finished ")
    assert lines[1] == "started: 0 ok, 0 failed, no trial finished yet"


@pytest.mark.parametrize("args", [
    ("results", "ls"), ("results", "table", "x"), ("results", "sql", "SELECT 1"), ("results", "compact", "x"),
    ("report", "x"), ("run", str(REPO / "sweeps" / "quickstart.yaml"), "--dry-run"),
])
def test_results_naming_a_file_exits_2_with_one_line(tmp_path, args):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    proc = run_main(*args, "--results", str(afile))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"bench: error: --results {afile}: is a file") and proc.stdout == ""


def test_names_are_checked_before_anything_is_created(tmp_path):
    from bench.perf.store import synthetic_row
    from bench.store import ResultStore

    results = tmp_path / "store" / "results"
    ResultStore(results, "ok").write_trial(synthetic_row("ok", 0))
    (tmp_path / "store" / "x" / "trials").mkdir(parents=True)  # a folder beside the store that looks like a sweep
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for args in (("report", "../x"), ("results", "compact", "../x"), ("report", "nope")):
        proc = run_main(*args, "--results", str(results))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (args, proc.stderr)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing created anywhere


def test_trial_runs_one_trial_without_ray(tmp_path):
    sweep = {"name": "one", "model": "vit_ti", "model_args": {"patch_size": 4, "dim": 16, "depth": 1, "heads": 2},
             "dataset": {"name": "spatial", "num_train": 128, "num_test": 64}, "train": {"epochs": 1, "batch_size": 32}}
    proc = run_main("trial", write(tmp_path, yaml.safe_dump(sweep)), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert '"test_acc"' in proc.stdout and '"n_train": 128' in proc.stdout


def test_missing_dataset_exits_2_naming_the_expected_path(tmp_path):
    results = tmp_path / "results"
    sweep = write(tmp_path, f"name: c10\nmodel: resnet18\ndataset: {{name: cifar10, root: {tmp_path}/data}}\n")
    proc = run_main("run", sweep, "--results", str(results))
    assert_bad_input(proc, "sweep.yaml: dataset:", f"{tmp_path}/data/cifar-10-batches-py", "download: true")
    assert not results.exists()


def test_the_commands_quick_exit_keeps_what_a_normal_exit_keeps(tmp_path):
    """`bench` skips the interpreter's teardown (seconds with torch and Ray loaded); before it,
    other threads finish, atexit handlers run, buffered output is written, and the code is kept."""
    import subprocess
    import sys

    script = f"""
import atexit, pathlib, sys, threading, time
import torch  # what makes a normal teardown slow
from bench.cli import _exit_now
out = pathlib.Path({str(tmp_path)!r})
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.5)
    (out / "thread").write_text("joined")
threading.Thread(target=late).start()
sys.stdout.write("buffered line\\n")  # a pipe: block-buffered, still in the buffer here
_exit_now(3)
(out / "after").write_text("not reached")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered line\n"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "joined"
    assert not (tmp_path / "after").exists()
