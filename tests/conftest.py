"""Shared fixtures: a real local Ray and a real MLflow server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = str(Path(sys.executable).with_name("bench"))

import tests.helpers.flaky  # noqa: E402,F401  (registers flaky_net in the driver)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session (2 CPUs, as on CI), with the test-only models in its workers."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": "tests.helpers.flaky.register",
            "env_vars": {"PYTHONPATH": str(REPO)},
        },
    )
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on 127.0.0.1 with its SQLite store and artifacts under `root`
    (the same `root` and `port` again: the same server back after it was stopped)."""
    port = port or free_port()
    mlflow_exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = open(root / "server.log", "a")
    proc = subprocess.Popen(
        [mlflow_exe, "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/server.db", "--default-artifact-root", str(root / "artifacts"),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # No background job runner: it forks workers that outlive a failed start.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    log.close()
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop_mlflow_server(proc)
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return proc, uri
        except OSError:
            time.sleep(0.5)
    stop_mlflow_server(proc)
    raise RuntimeError("mlflow server did not come up in 120 s")


def stop_mlflow_server(proc: subprocess.Popen, sig: int = 15) -> None:
    """Stop the server and its workers: the whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 for the session."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield uri
    stop_mlflow_server(proc)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed `bench` command in a subprocess, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([BENCH, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_main(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`bench.cli.main` in this process, with what a subprocess would give: exit code, stdout, stderr.

    For the many bad-input cases: the installed command adds seconds of Python start and
    imports per call; a few tests still run it as a subprocess (`run_cli`) to show both agree.
    """
    import contextlib
    import io

    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse exits
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["bench", *args], code, out.getvalue(), err.getvalue())


def mlflow_runs(uri: str, experiment: str) -> tuple[list, list]:
    """(child runs, parent runs) of an experiment, read with an explicit client.

    Never `mlflow.set_tracking_uri` in tests: it also exports MLFLOW_TRACKING_URI, which
    would send every later sweep in this process to that store.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} at {uri}"
    runs = client.search_runs([found.experiment_id])
    return [r for r in runs if "trial_id" in r.data.tags], [r for r in runs if "trial_id" not in r.data.tags]
