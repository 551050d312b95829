"""Results in a bucket: a real S3 API (moto's server) on 127.0.0.1, a real sweep, read back."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from bench.errors import BenchInputError
from bench.storage import resolve_results
from tests.conftest import BENCH, free_port, mlflow_runs, run_cli

BUCKET = "bench-results"


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1 with one versioned bucket (versions show what was written, even if deleted)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    yield {"endpoint": endpoint, "env": env, "client": client}
    server.stop()


def bucket_fs(endpoint: str) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                             endpoint_override=endpoint.removeprefix("http://"), scheme="http")


def write_sweep(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        dataset: {{name: spatial, num_test: 128}}
        model_args: {{patch_size: 4, dim: 32, depth: 1, heads: 2, width: 8}}
        train: {{epochs: 2, batch_size: 64, warmup_epochs: 0}}
        resources: {{cpus_per_trial: 1, gpus_per_trial: 0, max_failures: 1}}
        train_size: 128
        grid:
          model: [vit_ti, resnet18]
        """))
    return path


@pytest.mark.slow
def test_sweep_results_and_checkpoints_go_to_the_bucket(tmp_path, s3_server, mlflow_server):
    sweep = write_sweep(tmp_path, "s3sweep")
    # The keys are in the URI (and a password in the MLflow one), not in the environment: they reach
    # pyarrow, Tune's workers and MLflow through the environment bench moves them to, and nothing
    # shown or written holds them (checked below on every version of every object in the bucket).
    secret, password = "S3cretInTheUri", "PwInTheUri"
    results = f"s3://AKIDINURI:{secret}@{BUCKET}/team"
    env = {k: v for k, v in {**os.environ, **s3_server["env"]}.items() if not k.startswith(("AWS_ACCESS", "AWS_SECRET"))}
    done = subprocess.run([BENCH, "run", str(sweep), "--results", results, "--mlflow-uri",
                           mlflow_server.replace("http://", f"http://bench:{password}@")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert secret not in done.stdout + done.stderr and password not in done.stdout + done.stderr
    results = f"s3://{BUCKET}/team"

    # The Parquet store, read back from the bucket with plain pyarrow.
    fs = bucket_fs(s3_server["endpoint"])
    trials = pq.read_table(f"{BUCKET}/team/s3sweep/trials", filesystem=fs).to_pandas()
    assert sorted(trials["model"]) == ["resnet18", "vit_ti"]
    assert set(trials["status"]) == {"ok"}
    assert trials["test_acc"].between(0, 1).all()
    epochs = pq.read_table(f"{BUCKET}/team/s3sweep/epochs", filesystem=fs).to_pandas()
    assert len(epochs) == 4  # 2 trials x 2 epochs

    # ... and through the CLI, as a user queries it.
    table = run_cli("results", "table", "s3sweep", "--results", results, "--format", "csv",
                    cwd=tmp_path, env=s3_server["env"])
    assert table.returncode == 0, table.stderr
    assert "vit_ti" in table.stdout and "resnet18" in table.stdout

    # Tune's checkpoints were written to the bucket (every version is kept), then removed
    # with the launch; nothing was written to a local folder named after the URI.
    keys = [v["Key"] for v in s3_server["client"].list_object_versions(
        Bucket=BUCKET, Prefix="team/s3sweep/.tune/").get("Versions", [])]
    assert any("/checkpoint_" in k for k in keys), keys[:20]
    live = s3_server["client"].list_objects_v2(Bucket=BUCKET, Prefix="team/s3sweep/.tune/").get("Contents", [])
    assert [o["Key"] for o in live if not o["Key"].endswith("/")] == []  # (an empty folder marker may stay)
    assert not (tmp_path / "s3:").exists()
    client = s3_server["client"]
    versions = client.list_object_versions(Bucket=BUCKET, Prefix="team/s3sweep/").get("Versions", [])
    assert any(v["Key"].endswith("tuner.pkl") for v in versions)  # Tune's pickled experiment, param space included
    for version in versions:
        body = client.get_object(Bucket=BUCKET, Key=version["Key"], VersionId=version["VersionId"])["Body"].read()
        assert secret.encode() not in body and password.encode() not in body, version["Key"]

    children, _ = mlflow_runs(mlflow_server, "s3sweep")
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(trials["trial_id"])


@pytest.mark.slow
def test_bucket_without_tracking_server_is_bad_input(tmp_path, s3_server):
    sweep = write_sweep(tmp_path, "s3nomlflow")
    env = {**s3_server["env"], "MLFLOW_TRACKING_URI": ""}
    done = run_cli("run", str(sweep), "--results", f"s3://{BUCKET}/nomlflow", cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--mlflow-uri" in done.stderr and "Traceback" not in done.stderr
    assert s3_server["client"].list_objects_v2(Bucket=BUCKET, Prefix="nomlflow/")["KeyCount"] == 0


def test_results_uri_resolution(tmp_path, s3_server, monkeypatch):
    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    local = resolve_results(str(tmp_path / "r"))
    assert local.is_local and local.tune_storage("sw") == (f"{tmp_path}/r/sw/.tune", None)
    bucket = resolve_results(f"s3://{BUCKET}/a/b/")
    path, fs = bucket.tune_storage("sw")
    assert not bucket.is_local and path == f"{BUCKET}/a/b/sw/.tune" and isinstance(fs, pafs.S3FileSystem)
    with pytest.raises(BenchInputError, match="does not exist"):
        resolve_results("s3://no-such-bucket/x")
    with pytest.raises(BenchInputError, match="unsupported scheme"):
        resolve_results("ftp://host/x")
    with pytest.raises(BenchInputError, match="BUCKET"):
        resolve_results("s3://")
