"""`bench submit`: send a sweep to a Ray cluster through the Ray Jobs API.

The job runs `bench run` on the cluster's head, so everything a local run does
(resume, retries, the Parquet store, MLflow, the checks that fail fast) happens there
unchanged. What travels with the job: a working dir holding the sweep file, and, unless
`ship_code` is off, this checkout's `bench` package (as a runtime-env py_module, so the
cluster runs the code the sweep was written against; the image supplies the
dependencies). Credentials do not travel in the command: the cluster's own environment
(on Kubernetes, Secrets) provides `MLFLOW_TRACKING_USERNAME`, `AWS_*` and the like, and
`BENCH_RESULTS` / `MLFLOW_TRACKING_URI` defaults when the flags are not given; credentials
written into a `--results` or `--mlflow-uri` URI are taken out of it and sent as the job's
environment variables instead (bench.storage.split_credentials).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence, TextIO

import bench
from bench.errors import BenchInputError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
RESULTS_ENV = "BENCH_RESULTS"


def api_address(address: str | None) -> str:
    """The Jobs API URL: --address, else RAY_API_SERVER_ADDRESS; `HOST:8265` means http://HOST:8265."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        raise BenchInputError("--address: expected the Ray dashboard's Jobs API, e.g. http://HEAD:8265")
    if "://" not in address:
        address = f"http://{address}"
    scheme = address.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise BenchInputError(
            f"--address {address}: bench submit talks to the Ray Jobs API, expected http://HEAD:8265 "
            "(ray:// and GCS addresses are for bench run --address)")
    return address.rstrip("/")


def entrypoint(
    sweep_file: str,
    results: str | None = None,
    mlflow_uri: str | None = None,
    max_concurrent: int | None = None,
    overrides: Sequence[str] = (),
    fresh: bool = False,
) -> str:
    """The shell command the job runs; without --results it uses the cluster's $BENCH_RESULTS."""
    parts = ["bench", "run", shlex.quote(sweep_file), "--results"]
    parts.append(shlex.quote(results) if results else f'"${{{RESULTS_ENV}:-results}}"')
    if mlflow_uri:
        parts += ["--mlflow-uri", shlex.quote(mlflow_uri)]
    if max_concurrent is not None:
        parts += ["--max-concurrent", str(int(max_concurrent))]
    for item in overrides:
        parts += ["--set", shlex.quote(item)]
    if fresh:
        parts.append("--fresh")
    return " ".join(parts)


def runtime_env(working_dir: str, ship_code: bool = True) -> dict:
    """What the job carries: the staged working dir, and this checkout's bench package."""
    env: dict = {
        "working_dir": working_dir,
        "env_vars": {"PYTHONUNBUFFERED": "1"},
        "excludes": ["__pycache__", "*.pyc"],
    }
    if ship_code:
        env["py_modules"] = [str(Path(bench.__file__).resolve().parent)]
    return env


def submission_id(sweep_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", sweep_name.lower()).strip("-")[:40] or "sweep"
    return f"bench-{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def connect(address: str):
    """A JobSubmissionClient for `address`, or one line naming the address when nothing answers."""
    from ray.job_submission import JobSubmissionClient

    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) and not os.environ.get("RAY_AUTH_MODE"):
        os.environ["RAY_AUTH_MODE"] = "token"  # a token was given: send it (KubeRay's authOptions mode token)
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BenchInputError(f"--address {address}: no Ray Jobs API answers there ({reason})") from None


def submit(
    sweep_path: str,
    address: str | None,
    results: str | None = None,
    mlflow_uri: str | None = None,
    max_concurrent: int | None = None,
    overrides: Sequence[str] = (),
    fresh: bool = False,
    wait: bool = False,
    ship_code: bool = True,
    out: TextIO | None = None,
) -> int:
    """Validate the sweep here, submit it, and (with wait) stream its logs and return its exit code."""
    from bench.spec import load_sweep

    out = out or sys.stdout
    sweep = load_sweep(sweep_path, list(overrides))  # bad input stops here, before the cluster sees it
    if max_concurrent is not None and max_concurrent < 1:
        raise BenchInputError("--max-concurrent: expected a whole number >= 1")
    url = api_address(address)
    client = connect(url)
    job_id = submission_id(sweep.name)
    name = Path(sweep_path).name
    from bench.storage import split_credentials

    # Credentials in a URI go to the job as environment variables, never into its entrypoint
    # (which the Jobs API keeps and shows, and which is printed here).
    results, results_env = split_credentials(results) if results else (results, {})
    mlflow_uri, mlflow_env = split_credentials(mlflow_uri) if mlflow_uri else (mlflow_uri, {})
    with tempfile.TemporaryDirectory(prefix="bench-submit-") as staging:
        shutil.copyfile(sweep_path, Path(staging) / name)
        command = entrypoint(name, results, mlflow_uri, max_concurrent, overrides, fresh)
        env = runtime_env(staging, ship_code)
        env["env_vars"].update({**results_env, **mlflow_env})
        client.submit_job(
            entrypoint=command,
            submission_id=job_id,
            runtime_env=env,
            metadata={"bench.sweep": sweep.name, "bench.version": bench.__version__},
        )
    print(f"submitted {job_id}: {command}", file=out, flush=True)
    if not wait:
        print(f"follow it with: ray job logs --address {url} --follow {job_id}", file=out, flush=True)
        return 0
    stream_logs(client, job_id, out)
    return job_exit_code(client, job_id, out)


def stream_logs(client, job_id: str, out: TextIO) -> None:
    """Print the job's logs as they come; if the log stream breaks, the status poll still ends the wait."""

    async def follow() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(follow())
    except (RuntimeError, OSError) as exc:
        print(f"bench: warning: log stream of {job_id} ended early ({exc}); waiting for the job", file=sys.stderr)


def job_exit_code(client, job_id: str, out: TextIO, poll_s: float = 1.0) -> int:
    """The job driver's exit code once the job is over (bench run's own: 0, 1 trials failed, 2 bad input)."""
    while True:
        info = client.get_job_info(job_id)
        status = str(getattr(info.status, "value", info.status))
        if status in TERMINAL:
            break
        time.sleep(poll_s)
    code = info.driver_exit_code
    if status == "SUCCEEDED":
        code = 0 if code is None else code
    elif code is None or code == 0:
        code = 1
    print(f"job {job_id} {status.lower()} (exit code {code})", file=out, flush=True)
    return int(code)
