"""`bench submit` on a real two-node Ray cluster on this machine.

The head (127.0.0.2) and a second node (127.0.0.3, one fake GPU) are separate `ray start`
processes with their own temp dirs. The second node runs in its own mount namespace
with an empty tmpfs over `hidden/`: a folder the head sees and that node does not, which
is what a node-local results folder is on a real cluster. `shared/` is seen by both.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.errors import BenchInputError
from bench.storage import check_trial_fits, is_tracking_server
from bench.submit import api_address, entrypoint
from tests.conftest import free_port, mlflow_runs, run_cli

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"


def _ports(*names: str) -> list[str]:
    return [arg for name in names for arg in (f"--{name}", str(free_port()))]


def _node_ports() -> list[str]:
    return _ports("node-manager-port", "object-manager-port", "runtime-env-agent-port", "dashboard-agent-grpc-port",
                  "dashboard-agent-listen-port", "metrics-export-port")


def _alive_nodes(dashboard: str, env: dict) -> int:
    """Ray's state API, with the cluster's auth token (a subprocess: the token lives in its environment)."""
    code = ("from ray.util.state import list_nodes; "
            f"print(len(list_nodes(address={dashboard!r}, filters=[('state', '=', 'ALIVE')], timeout=5)))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip().isdigit() else 0


def _stop(proc: subprocess.Popen) -> None:
    """End a `ray start --block` and everything it started: its own process group, and nothing else.

    SIGKILL at once: on SIGTERM a node drains for up to 30 s, and this cluster holds nothing to keep.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    shared, hidden = root / "shared", root / "hidden"
    shared.mkdir()
    hidden.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_TRACKING_URI": "",
           # Ray's token auth, as the KubeRay cluster runs it: every node and client holds the token.
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    ray_tmp = Path(tempfile.mkdtemp(prefix="bt", dir="/tmp"))  # Ray's socket paths must stay under 107 bytes
    gcs_port, dash_port = free_port(), free_port()
    dashboard = f"http://{HEAD_IP}:{dash_port}"
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address", HEAD_IP, "--port", str(gcs_port),
         "--dashboard-host", HEAD_IP, "--dashboard-port", str(dash_port), "--include-dashboard", "true",
         "--num-cpus", "1", "--num-gpus", "0", "--temp-dir", str(ray_tmp / "h"), "--disable-usage-stats",
         *_node_ports()],
        env=env, stdout=open(root / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    node_cmd = " ".join([
        RAY, "start", "--block", "--address", f"{HEAD_IP}:{gcs_port}", "--node-ip-address", NODE_IP,
        "--num-cpus", "1", "--num-gpus", "1", "--temp-dir", str(ray_tmp / "n"), "--disable-usage-stats",
        *_node_ports()])
    node = None
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, (root / "head.log").read_text()[-3000:]
            if _alive_nodes(dashboard, env) >= 1:
                break
            assert time.monotonic() < deadline, "Ray head did not come up in 120 s"
            time.sleep(1)
        node = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f'mount -t tmpfs tmpfs "{hidden}" && exec {node_cmd}'],
            env=env, stdout=open(root / "node.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        while _alive_nodes(dashboard, env) < 2:
            assert node.poll() is None, (root / "node.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "second Ray node did not join in 120 s"
            time.sleep(1)
        yield {"dashboard": dashboard, "shared": shared, "hidden": hidden, "env": env, "root": root, "node": node}
    finally:
        for proc in (node, head):
            if proc is not None:
                _stop(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def write_sweep(folder: Path, name: str, gpus: float = 0, epochs: int = 1) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        dataset: {{name: spatial, num_test: 128}}
        model_args: {{patch_size: 4, dim: 32, depth: 1, heads: 2, width: 8}}
        train: {{epochs: {epochs}, batch_size: 64, warmup_epochs: 0}}
        resources: {{cpus_per_trial: 1, gpus_per_trial: {gpus}, max_failures: 1}}
        train_size: 128
        grid:
          model: [vit_ti, resnet18]
        """))
    return path


@pytest.mark.slow
def test_submit_runs_a_sweep_on_two_nodes(tmp_path, two_nodes, mlflow_server):
    sweep = write_sweep(tmp_path, "twonodes", epochs=2)
    results = two_nodes["shared"] / "results"
    with_password = mlflow_server.replace("http://", "http://bench:pw-in-the-uri-42@")  # the server ignores it
    done = run_cli("submit", str(sweep), "--address", two_nodes["dashboard"], "--results", str(results),
                   "--mlflow-uri", with_password, "--wait", cwd=tmp_path, env=two_nodes["env"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "submitted bench-twonodes-" in done.stdout
    # The password went to the job as an environment variable, not into its command or any output.
    assert "pw-in-the-uri-42" not in done.stdout + done.stderr
    job_id = done.stdout.split("submitted ", 1)[1].split(":", 1)[0]
    probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""\
        import json
        from ray.job_submission import JobSubmissionClient
        info = JobSubmissionClient({two_nodes["dashboard"]!r}).get_job_info({job_id!r})
        print(json.dumps({{"entrypoint": info.entrypoint, "env": info.runtime_env.get("env_vars", {{}})}}))
        """)], env=two_nodes["env"], capture_output=True, text=True, timeout=120)  # the cluster's token
    assert probe.returncode == 0, probe.stderr[-2000:]
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    assert "pw-in-the-uri-42" not in info["entrypoint"] and f"--mlflow-uri {mlflow_server}" in info["entrypoint"]
    assert info["env"]["MLFLOW_TRACKING_PASSWORD"] == "pw-in-the-uri-42"
    assert "[2/2] ok" in done.stdout  # the job's own log lines, streamed back
    assert "succeeded (exit code 0)" in done.stdout

    trials = pd.read_parquet(results / "twonodes" / "trials")
    assert sorted(trials["model"]) == ["resnet18", "vit_ti"]
    assert set(trials["status"]) == {"ok"}
    children, parents = mlflow_runs(mlflow_server, "twonodes")
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(trials["trial_id"])
    assert {r.info.run_id for r in children} == set(trials["mlflow_run_id"])
    assert len(parents) == 1
    assert not (results / "twonodes" / ".tune").exists()  # checkpoints removed with the launch


@pytest.mark.slow
def test_node_local_results_fail_fast(tmp_path, two_nodes, mlflow_server):
    sweep = write_sweep(tmp_path, "nodelocal")
    results = two_nodes["hidden"] / "results"
    started = time.monotonic()
    done = run_cli("submit", str(sweep), "--address", two_nodes["dashboard"], "--results", str(results),
                   "--mlflow-uri", mlflow_server, "--wait", cwd=tmp_path, env=two_nodes["env"])
    assert done.returncode == 2, done.stdout[-4000:]
    errors = [line for line in done.stdout.splitlines() if line.startswith("bench: error:")]
    assert len(errors) == 1 and "is local to this node" in errors[0] and NODE_IP in errors[0], done.stdout[-3000:]
    assert "Traceback" not in done.stdout
    assert not results.exists()  # bad input writes nothing
    assert time.monotonic() - started < 120


@pytest.mark.slow
def test_gpus_the_cluster_lacks_fail_fast(tmp_path, two_nodes, mlflow_server):
    sweep = write_sweep(tmp_path, "toomanygpus", gpus=2)  # the GPU node has 1
    done = run_cli("submit", str(sweep), "--address", two_nodes["dashboard"],
                   "--results", str(two_nodes["shared"] / "results"), "--mlflow-uri", mlflow_server, "--wait",
                   cwd=tmp_path, env=two_nodes["env"], timeout=180)
    assert done.returncode == 2, done.stdout[-4000:]
    errors = [line for line in done.stdout.splitlines() if line.startswith("bench: error:")]
    assert len(errors) == 1 and "resources.gpus_per_trial: 2" in errors[0], done.stdout[-3000:]
    assert not (two_nodes["shared"] / "results" / "toomanygpus").exists()


@pytest.mark.slow
def test_trial_uses_the_gpu_ray_assigned(two_nodes):
    """A task that asks for half a GPU lands on the node with the (fake) GPU and picks the one Ray gave it."""
    script = textwrap.dedent("""\
        import os, ray
        from bench.storage import trial_device
        ray.init()
        task = ray.remote(num_gpus=0.5)(lambda: (trial_device(0.5), os.environ.get("CUDA_VISIBLE_DEVICES")))
        print("RESULT", *ray.get(task.remote()))
        print("CPU-TRIAL", ray.get(ray.remote(lambda: trial_device(0)).remote()))
        """)
    done = subprocess.run([RAY, "job", "submit", "--address", two_nodes["dashboard"], "--", "python", "-c", script],
                          env=two_nodes["env"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    result = next(line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RESULT"))
    assert result == ["cuda:0", "0"]  # Ray's CUDA_VISIBLE_DEVICES, and the device index inside it
    assert "CPU-TRIAL cpu" in done.stdout


@pytest.mark.slow
def test_losing_a_worker_node_mid_sweep_resumes_its_trial_from_a_checkpoint(tmp_path, two_nodes, mlflow_server):
    """The second node dies (SIGKILL to it and its workers) while both trials train: its trial is
    retried on the head from its last checkpoint, every trial ends ok with one row, nothing restarts
    from epoch 0. Runs last among the two-node tests: the cluster has one node afterwards."""
    name = "nodeloss"
    sweep = tmp_path / f"{name}.yaml"
    sweep.write_text(textwrap.dedent(f"""\
        name: {name}
        model: vit_ti
        dataset: {{name: spatial, num_train: 256, num_test: 128}}
        model_args: {{dim: 32, depth: 1, heads: 2}}
        train: {{epochs: 80, batch_size: 32, warmup_epochs: 0}}
        resources: {{cpus_per_trial: 1, max_failures: 2, report_every_s: 0}}
        train_size: 256
        grid: {{seed: [0, 1]}}
        """))
    results = two_nodes["shared"] / "results"
    job = subprocess.Popen([str(Path(sys.executable).with_name("bench")), "submit", str(sweep), "--address",
                            two_nodes["dashboard"], "--results", str(results), "--mlflow-uri", mlflow_server, "--wait"],
                           cwd=tmp_path, env=two_nodes["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def checkpoints() -> dict[str, int]:
        latest: dict[str, int] = {}
        for path in (results / name / ".tune").glob("*/*/checkpoint_*"):
            latest[path.parent.name] = max(latest.get(path.parent.name, -1), int(path.name.split("_")[-1]))
        return latest

    deadline = time.monotonic() + 300
    while not (len(checkpoints()) == 2 and min(checkpoints().values()) >= 3):
        assert job.poll() is None, job.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "both trials did not get past epoch 4 in 300 s"
        time.sleep(0.2)
    _stop(two_nodes["node"])  # the node and every process on it, at once
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-5000:]

    trials = pd.read_parquet(results / name / "trials")
    assert len(trials) == 2 and trials.trial_id.is_unique and set(trials.status) == {"ok"}
    assert set(trials.epochs) == {80}
    retried = trials[trials.attempts > 1]
    assert len(retried) == 1, trials[["trial_id", "attempts", "resumed_from_epoch"]]
    assert retried.resumed_from_epoch.iloc[0] >= 4  # from its checkpoint, not from scratch
    epochs = pd.read_parquet(results / name / "epochs")
    mine = epochs[epochs.trial_id == retried.trial_id.iloc[0]]
    assert sorted(mine.epoch) == list(range(1, 81))  # every epoch once
    assert mine[mine.attempt > 1].epoch.min() > 4  # the second attempt continued


def test_submit_bad_input_is_one_line_and_submits_nothing(tmp_path, capsys):
    from bench.cli import main

    sweep = write_sweep(tmp_path, "bad")
    nobody = f"http://127.0.0.1:{free_port()}"
    for args, expected in [
        (("submit", str(sweep), "--address", nobody), "no Ray Jobs API answers there"),
        (("submit", str(tmp_path / "missing.yaml"), "--address", nobody), "missing.yaml"),
        (("submit", str(sweep), "--address", "ray://head:10001"), "expected http://HEAD:8265"),
        (("submit", str(sweep), "--address", nobody, "--max-concurrent", "0"), "--max-concurrent"),
    ]:
        assert main(list(args)) == 2
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and expected in err, err
        assert out == ""


def test_entrypoint_and_address():
    assert api_address("head:8265") == "http://head:8265"
    assert entrypoint("s.yaml") == 'bench run s.yaml --results "${BENCH_RESULTS:-results}"'
    assert entrypoint("my sweep.yaml", "s3://b/r", "http://mlflow:5000", 2, ["train.epochs=3"], True) == (
        "bench run 'my sweep.yaml' --results s3://b/r --mlflow-uri http://mlflow:5000 --max-concurrent 2 "
        "--set train.epochs=3 --fresh")
    assert is_tracking_server("http://mlflow:5000") and not is_tracking_server("sqlite:////shared/mlflow.db")


def test_trial_shape_must_fit_a_node_or_an_autoscaling_group():
    cpu_head = {"Resources": {"CPU": 0.0}}
    gpu_node = {"Resources": {"CPU": 8.0, "GPU": 1.0}}
    check_trial_fits([cpu_head, gpu_node], 1, 0.25, None)  # fractions share a GPU
    with pytest.raises(BenchInputError, match=r"gpus_per_trial: 0.5: no node .*\(0 GPUs in 1 nodes\) and it does not"):
        check_trial_fits([cpu_head], 1, 0.5, None)
    groups = [{"name": "gpu", "resources": {"CPU": 8, "GPU": 1}, "max_count": 4}]
    check_trial_fits([cpu_head], 1, 0.5, groups)  # KubeRay will add a GPU pod
    with pytest.raises(BenchInputError, match="no autoscaling node group can add one"):
        check_trial_fits([cpu_head], 1, 2, groups)
    with pytest.raises(BenchInputError, match="cpus_per_trial: 16"):
        check_trial_fits([gpu_node], 16, 0, None)
