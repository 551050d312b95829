"""One `bench run` per sweep at a time: a second launch of the same sweep is refused, not merged.

Two launches of one sweep would train the same pending trials twice and race on their
files. A local store takes an advisory `flock` on `<results>/<sweep>/.lock`: the kernel
drops it when the holder dies, so a killed driver never blocks the re-run that resumes
it. A bucket has no locks: the launch writes a lease object there and renews it every
`RENEW_S` seconds; a lease older than `STALE_S` belongs to a dead driver and is taken
over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator

import pyarrow.fs as pafs

from bench.errors import BenchInputError

LOCK_NAME = ".lock"
RENEW_S = 30.0
STALE_S = 120.0


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": uuid.uuid4().hex}


def _busy(sweep: str, holder: dict[str, Any]) -> BenchInputError:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
    return BenchInputError(f"sweep {sweep}: another bench run of this sweep is running ({who}); "
                           "wait for it to finish (a re-run then resumes what is left) or stop it first")


@contextlib.contextmanager
def sweep_lock(fs: pafs.FileSystem, base: str, sweep: str, is_local: bool) -> Iterator[None]:
    """Hold the sweep's lock for the block; BenchInputError (exit 2) if another launch holds it."""
    fs.create_dir(base, recursive=True)
    path = f"{base}/{LOCK_NAME}"
    if is_local:
        with _local_lock(path, sweep):
            yield
    else:
        with _lease(fs, path, sweep):
            yield


@contextlib.contextmanager
def _local_lock(path: str, sweep: str) -> Iterator[None]:
    import fcntl

    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            raise _busy(sweep, holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock; the file stays (it is hidden from readers)


def _read_lease(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    try:
        with fs.open_input_stream(path) as stream:
            return json.loads(stream.read().decode() or "{}")
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


def _write_lease(fs: pafs.FileSystem, path: str, lease: dict[str, Any]) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps({**lease, "renewed": time.time()}).encode())


@contextlib.contextmanager
def _lease(fs: pafs.FileSystem, path: str, sweep: str) -> Iterator[None]:
    current = _read_lease(fs, path)
    if current and time.time() - float(current.get("renewed", 0)) < STALE_S:
        raise _busy(sweep, current)
    mine = _holder()
    _write_lease(fs, path, mine)
    time.sleep(0.5)  # two launches that both found no lease: the last writer wins, the other backs off
    seen = _read_lease(fs, path)
    if not seen or seen.get("token") != mine["token"]:
        raise _busy(sweep, seen or {})
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RENEW_S):
            with contextlib.suppress(OSError):
                _write_lease(fs, path, mine)

    thread = threading.Thread(target=renew, name="bench-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(OSError, FileNotFoundError):
            fs.delete_file(path)
