"""Credentials written into a URI never reach what is shown, logged or persisted: they move to
environment variables (AWS_*, MLFLOW_TRACKING_*) before anything else sees the URI."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from bench.storage import split_credentials, without_credentials
from tests.conftest import REPO, run_cli
from tests.test_storage_s3 import BUCKET, s3_server  # noqa: F401  (the module-scoped moto server)


@pytest.mark.parametrize("uri,clean,env", [
    ("s3://AKID:s3cr%2Ft@bkt/path?region=us-east-1", "s3://bkt/path?region=us-east-1",
     {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3cr/t"}),
    ("s3://bkt/p?access_key=AKID&secret_key=xyz&session_token=tok&endpoint_override=h:9000&scheme=http",
     "s3://bkt/p?endpoint_override=h:9000&scheme=http",
     {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "xyz", "AWS_SESSION_TOKEN": "tok"}),
    ("http://bench:p%40ss@mlflow:5000", "http://mlflow:5000",
     {"MLFLOW_TRACKING_USERNAME": "bench", "MLFLOW_TRACKING_PASSWORD": "p@ss"}),
    ("gs://b/p?api_key=abc", "gs://b/p", {}),
    ("s3://bkt/p", "s3://bkt/p", {}), ("results", "results", {}), ("http://mlflow:5000", "http://mlflow:5000", {}),
])
def test_split_credentials(uri, clean, env):
    assert split_credentials(uri) == (clean, env)
    assert without_credentials(uri) == clean


def test_the_printed_and_submitted_entrypoint_holds_no_password(monkeypatch):
    from bench.submit import entrypoint

    results, env = split_credentials("s3://AKID:topsecret@bkt/r")
    command = entrypoint("s.yaml", results, without_credentials("http://u:pw@mlflow:5000"))
    assert "topsecret" not in command and "pw" not in command.replace("--mlflow-uri", "")
    assert env == {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "topsecret"}


@pytest.mark.slow
def test_credentials_in_the_results_and_mlflow_uris_are_nowhere_in_the_store_tune_state_or_output(
        s3_server, mlflow_server, tmp_path):  # noqa: F811
    """A real sweep on moto's S3 with the keys in `--results` and a password in `--mlflow-uri`: it runs
    (the credentials reach pyarrow, Tune's workers and MLflow through the environment), and no
    version of any object written to the bucket (Tune's experiment state and param space included,
    though deleted with the launch: the bucket keeps every version) holds them."""
    sweep = tmp_path / "creds.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "creds", "model": "flaky_net", "model_args": {"fail_times": 0},
        "dataset": {"name": "spatial", "num_train": 32, "num_test": 32}, "train_size": 32,
        "train": {"epochs": 2, "batch_size": "full"}, "resources": {"cpus_per_trial": 1, "max_failures": 0},
    }))
    env = {k: v for k, v in s3_server["env"].items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    env = {**env, "BENCH_PLUGINS": "tests.helpers.flaky", "PYTHONPATH": str(REPO)}
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ACCESS", "AWS_SECRET"))}
    secret, password = "S3cretInTheUri", "PwInTheUri"
    results = f"s3://AKIDINURI:{secret}@{BUCKET}/creds"
    mlflow_uri = mlflow_server.replace("http://", f"http://bench:{password}@")
    done = run_cli("run", str(sweep), "--results", results, "--mlflow-uri", mlflow_uri, cwd=tmp_path,
                   env={**full_env, **env})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert secret not in done.stdout + done.stderr and password not in done.stdout + done.stderr
    client = s3_server["client"]
    versions = client.list_object_versions(Bucket=BUCKET, Prefix="creds/").get("Versions", [])
    keys = {v["Key"] for v in versions}
    assert any("/.tune/" in k for k in keys) and any(k.endswith(".parquet") for k in keys), sorted(keys)[:20]
    for version in versions:
        body = client.get_object(Bucket=BUCKET, Key=version["Key"], VersionId=version["VersionId"])["Body"].read()
        assert secret.encode() not in body and password.encode() not in body, version["Key"]
    row = client.get_object(Bucket=BUCKET, Key=next(k for k in keys if "/trials/" in k and k.endswith(".parquet")))
    assert row["ContentLength"] > 0
    from tests.conftest import mlflow_runs

    children, _ = mlflow_runs(mlflow_server, "creds")
    assert len(children) == 1 and secret not in json.dumps(children[0].data.params)


def test_error_lines_never_show_uri_credentials(s3_server, monkeypatch, tmp_path):  # noqa: F811
    from tests.conftest import run_main

    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    for args in (("results", "table", "x", "--results", f"s3://AKID:SecretX1@{BUCKET}/nothing"),
                 ("results", "sql", "SELECT 1", "--results", f"s3://AKID:SecretX1@{BUCKET}/nothing"),
                 ("run", str(REPO / "sweeps" / "quickstart.yaml"), "--results", f"s3://AKID:SecretX1@no-such-bucket/x")):
        proc = run_main(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "SecretX1" not in proc.stderr + proc.stdout and "AKID" not in proc.stderr, proc.stderr
