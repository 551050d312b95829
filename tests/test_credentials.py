"""Credentials written into a URI never reach what is shown, logged or persisted: they move to
environment variables (AWS_*, MLFLOW_TRACKING_*) before anything else sees the URI. A real
sweep on moto's S3 with keys in its URI: tests/test_storage_s3.py."""

from __future__ import annotations

import pytest

from bench.storage import split_credentials, without_credentials
from tests.conftest import REPO
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
