"""The bucket lease is fenced: real S3 API (moto's server on 127.0.0.1), real processes, real launches.

Two drivers on one bucket: exactly one holds the sweep, the other is refused. A launch whose lease
another launch took over (its token overwritten) stops at once and deletes none of the other
launch's checkpoints, nor its lease.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import BENCH, REPO
from tests.test_storage_s3 import BUCKET, s3_server  # noqa: F401  (the module-scoped moto server)


def _locker(endpoint: str, base: str, go: Path, hold_s: float) -> subprocess.Popen:
    """A process that waits for `go`, then takes the sweep's lock on the bucket and holds it."""
    code = textwrap.dedent(f"""\
        import os, sys, time
        import pyarrow.fs as pafs
        from bench.errors import BenchInputError
        from bench.lock import sweep_lock
        fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                               endpoint_override={endpoint.removeprefix("http://")!r}, scheme="http")
        print("ready", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.005)
        try:
            with sweep_lock(fs, {base!r}, "race", is_local=False):
                print("held", flush=True)
                time.sleep({hold_s})
        except BenchInputError as exc:
            print("refused", exc, flush=True)
        """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)


@pytest.mark.slow
def test_two_drivers_racing_for_one_bucket_lease_one_is_refused(s3_server, tmp_path):  # noqa: F811
    for round_ in range(2):
        go = tmp_path / f"go{round_}"
        base = f"{BUCKET}/race{round_}/race"
        procs = [_locker(s3_server["endpoint"], base, go, hold_s=2.0) for _ in range(2)]
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]  # both imported and waiting
        go.touch()  # ... then both go for the lease at once
        outs = [p.communicate(timeout=60) for p in procs]
        firsts = sorted(out.split(" ", 1)[0].strip() for out, _ in outs)
        assert firsts == ["held", "refused"], outs
        refused = next(out for out, _ in outs if out.startswith("refused"))
        assert "another bench run of this sweep is running" in refused
        listed = s3_server["client"].list_objects_v2(Bucket=BUCKET, Prefix=f"race{round_}/").get("Contents", [])
        assert [o["Key"] for o in listed if not o["Key"].endswith("/")] == []  # the holder removed its lease


def test_a_stale_lease_is_taken_over_and_a_live_one_is_not(s3_server, monkeypatch):  # noqa: F811
    import pyarrow.fs as pafs

    from bench.errors import BenchInputError
    from bench.lock import sweep_lock

    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=s3_server["endpoint"].removeprefix("http://"), scheme="http")
    client, key = s3_server["client"], "stale/s/.lock"
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps({"pid": 7, "host": "h", "token": "x"}).encode())
    with pytest.raises(BenchInputError, match="pid 7 on h"):  # written just now: alive
        with sweep_lock(fs, f"{BUCKET}/stale/s", "s", is_local=False):
            pass
    monkeypatch.setenv("BENCH_LEASE_STALE_S", "1")
    time.sleep(2.1)  # S3 times are whole seconds
    with sweep_lock(fs, f"{BUCKET}/stale/s", "s", is_local=False):  # now stale: taken over
        mine = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        assert mine["pid"] == os.getpid()
    assert [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="stale/").get("Contents", [])
            if not o["Key"].endswith("/")] == []


@pytest.mark.slow
def test_a_launch_whose_lease_is_taken_stops_and_deletes_nothing_of_the_other(s3_server, mlflow_server, tmp_path):  # noqa: F811
    name, prefix = "leased", "fence"
    sweep = tmp_path / f"{name}.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": name, "model": "flaky_net", "model_args": {"fail_times": 0, "sleep_s": 0.3},
        "dataset": {"name": "spatial", "num_train": 32, "num_test": 32}, "train_size": 32,
        "train": {"batch_size": "full", "epochs": 200},
        "resources": {"cpus_per_trial": 1, "max_failures": 0, "report_every_s": 0},
    }))
    client, results = s3_server["client"], f"s3://{BUCKET}/{prefix}"
    env = {**os.environ, **s3_server["env"], "BENCH_PLUGINS": "tests.helpers.flaky", "PYTHONPATH": str(REPO),
           "BENCH_LEASE_RENEW_S": "1"}

    def run(log: str) -> subprocess.Popen:
        return subprocess.Popen([BENCH, "run", str(sweep), "--results", results, "--mlflow-uri", mlflow_server],
                                cwd=tmp_path, env=env, stdout=open(tmp_path / f"{log}.out", "w"),
                                stderr=open(tmp_path / f"{log}.err", "w"), text=True, start_new_session=True)

    def keys(under: str) -> list[str]:
        return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=under).get("Contents", [])]

    first = run("first")
    try:
        deadline = time.monotonic() + 240
        while not any("/checkpoint_" in k for k in keys(f"{prefix}/{name}/.tune/")):
            assert first.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first launch never checkpointed"
            time.sleep(0.5)

        # A second driver on the same bucket and sweep is refused (the lock itself, as `bench run` takes it).
        import pyarrow.fs as pafs

        from bench.errors import BenchInputError
        from bench.lock import sweep_lock

        fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                               endpoint_override=s3_server["endpoint"].removeprefix("http://"), scheme="http")
        with pytest.raises(BenchInputError, match="another bench run of this sweep is running"):
            with sweep_lock(fs, f"{BUCKET}/{prefix}/{name}", name, is_local=False):
                pass
        assert first.poll() is None  # the refusal did not disturb the holder

        # Another launch takes the sweep over (say, one that judged the lease stale): its lease and
        # its checkpoints are in the bucket now.
        other = {"pid": 4242, "host": "other-node", "token": "f" * 32, "renewed": time.time()}
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}/.lock", Body=json.dumps(other).encode())
        theirs = f"{prefix}/{name}/.tune/20260101-000000-other/x/checkpoint_000003/state.pt"
        client.put_object(Bucket=BUCKET, Key=theirs, Body=b"the other launch's checkpoint")
        code = first.wait(timeout=60)
        out, err = (tmp_path / "first.out").read_text(), (tmp_path / "first.err").read_text()
        assert code == 130, out[-2000:] + err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("bench:")]
        assert len(lines) == 1 and "lost its lease" in lines[0] and "pid 4242 on other-node" in lines[0], err[-3000:]
        assert theirs in keys(f"{prefix}/{name}/.tune/")  # nothing of the other launch deleted
        lease = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/{name}/.lock")["Body"].read())
        assert lease["token"] == other["token"]  # nor its lease
    finally:
        for proc in (first,):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
