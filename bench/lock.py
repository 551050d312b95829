"""One `bench run` per sweep at a time: a second launch of the same sweep is refused, not merged.

Two launches of one sweep would train the same pending trials twice and race on their
files. A local store takes an advisory `flock` on `<results>/<sweep>/.lock`: the kernel
drops it when the holder dies, so a killed driver never blocks the re-run that resumes
it. A bucket has no locks: the launch holds a lease object there, fenced: on S3 it is created
only if absent (`If-None-Match: *`) and renewed every `RENEW_S` seconds and deleted only if it
is still the object this launch wrote (`If-Match` on its ETag). A lease older than `STALE_S`
(by the store's clock) belongs to a dead driver and is taken over, again conditionally. A
launch whose renewal is refused (another launch took the lease) or fails for longer than the
lease lives stops at once, as on Ctrl-C (exit 130), keeps its checkpoints and deletes nothing
(`still_held` guards the removal of `.tune`). Stores without conditional writes here (gs://)
get the same protocol with the token read back before each renew and delete.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
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

    try:  # never through a symlink: it could point the lock's writes at any file the user can write
        handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), "r+")
    except OSError as exc:
        raise BenchInputError(f"{path}: cannot open the sweep's lock file ({exc.strerror}; a symbolic link is "
                              "refused)") from None
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


# ---------------------------------------------------------------------------- bucket leases


class LeaseLost(KeyboardInterrupt):
    """This launch's lease on its sweep was taken by another launch (or could not be renewed in
    time): the launch stopped where it was, keeping every checkpoint. Exit 130, like Ctrl-C."""


class _ConditionalS3:
    """The lease object on S3 with conditional requests (boto3): create only if absent
    (`If-None-Match: *`), renew and delete only if it is still the object we wrote (`If-Match`
    on its ETag). No two launches can both hold it, and none can overwrite or delete another's."""

    def __init__(self, client, bucket: str, key: str):
        self.client, self.bucket, self.key = client, bucket, key

    @staticmethod
    def _code(exc: BaseException) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def _refused(self, exc: BaseException) -> bool:
        return self._code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")

    def create(self, body: bytes) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, IfNoneMatch="*")["ETag"]
        except Exception as exc:
            if self._refused(exc):
                return None
            raise

    def read(self) -> tuple[dict[str, Any] | None, str | None, float | None]:
        """(lease, its ETag, its age in seconds by the store's clock), or Nones if there is none."""
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                return None, None, None
            raise
        body = got["Body"].read()
        age = None
        served = (got.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}).get("date")
        if served and got.get("LastModified"):
            from email.utils import parsedate_to_datetime

            age = (parsedate_to_datetime(served) - got["LastModified"]).total_seconds()
        lease = _parse(body)
        if age is None and lease:
            age = time.time() - float(lease.get("renewed", 0) or 0)
        return lease if lease is not None else {}, got["ETag"], age

    def replace(self, body: bytes, etag: str) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, IfMatch=etag)["ETag"]
        except Exception as exc:
            if self._refused(exc) or self._code(exc) in ("NoSuchKey", "404"):
                return None
            raise

    def delete(self, etag: str) -> bool:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
            return True
        except Exception as exc:
            if self._refused(exc):
                return False
            if self._code(exc) in ("NoSuchKey", "404"):
                return True
            if self._code(exc) not in ("NotImplemented", "InvalidArgument"):
                raise
        _, current, _ = self.read()  # a store without conditional deletes: check, then delete
        if current != etag:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key)
        return True


class _PlainStore:
    """The lease object through pyarrow's filesystem, for stores without conditional writes here
    (gs://): the token is checked before every renew and delete, and a create is read back after
    a pause; a narrow race remains between a check and the write that follows it."""

    def __init__(self, fs: pafs.FileSystem, path: str):
        self.fs, self.path = fs, path

    def read(self) -> tuple[dict[str, Any] | None, str | None, float | None]:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                lease = _parse(stream.read())
        except FileNotFoundError:
            return None, None, None
        except OSError as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                return None, None, None
            raise
        if lease is None:
            return {}, "", None
        return lease, str(lease.get("token", "")), time.time() - float(lease.get("renewed", 0) or 0)

    def _write(self, body: bytes) -> None:
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(body)

    def create(self, body: bytes) -> str | None:
        lease, _, _ = self.read()
        if lease is not None:
            return None
        token = _parse(body)["token"]
        self._write(body)
        time.sleep(0.5)  # two launches that both found none: the last writer wins, the other backs off
        seen, _, _ = self.read()
        return token if seen and seen.get("token") == token else None

    def replace(self, body: bytes, etag: str) -> str | None:
        _, current, _ = self.read()
        if current != etag:
            return None
        self._write(body)
        return etag

    def delete(self, etag: str) -> bool:
        _, current, _ = self.read()
        if current != etag:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path)
        return True


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        lease = json.loads(body.decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return lease if isinstance(lease, dict) else None


def _s3_client(fs: pafs.FileSystem):
    """A boto3 S3 client with the bucket filesystem's own settings (endpoint, region, keys), or None."""
    if not isinstance(fs, pafs.S3FileSystem):
        return None
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        return None
    settings = fs.__reduce__()[1][0]  # what the filesystem was built with (its pickling state)
    endpoint = settings.get("endpoint_override") or None
    if endpoint and "://" not in endpoint:
        endpoint = f"{settings.get('scheme') or 'https'}://{endpoint}"
    keys = {"aws_access_key_id": settings.get("access_key"), "aws_secret_access_key": settings.get("secret_key"),
            "aws_session_token": settings.get("session_token")}
    return boto3.client("s3", endpoint_url=endpoint, region_name=settings.get("region") or None,
                        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
                        **{k: v for k, v in keys.items() if v})


def lease_store(fs: pafs.FileSystem, path: str) -> _ConditionalS3 | _PlainStore:
    client = _s3_client(fs)
    if client is None:
        return _PlainStore(fs, path)
    bucket, _, key = path.partition("/")
    return _ConditionalS3(client, bucket, key)


def _timing() -> tuple[float, float]:
    """(renew every, stale after) in seconds; BENCH_LEASE_RENEW_S / BENCH_LEASE_STALE_S override them."""
    renew = float(os.environ.get("BENCH_LEASE_RENEW_S", RENEW_S))
    stale = float(os.environ.get("BENCH_LEASE_STALE_S", max(STALE_S, 4 * renew)))
    return renew, stale


#: Leases this process holds, by sweep folder: what `still_held` checks before a launch deletes checkpoints.
_held: dict[str, "_Holder"] = {}


class _Holder:
    def __init__(self, store, sweep: str, token: dict[str, Any], etag: str):
        self.store, self.sweep, self.mine, self.etag = store, sweep, token, etag
        self.lost: str | None = None

    def verify(self) -> bool:
        """Whether the lease in the store is still this launch's (read now, not remembered)."""
        if self.lost:
            return False
        try:
            _, etag, _ = self.store.read()
        except Exception:
            return False
        return etag == self.etag


def still_held(path: str) -> bool:
    """False if `path` lies in a sweep folder whose lease this process held and has lost: a launch
    that lost its lease must not delete what the launch that took it over is using."""
    for base, holder in list(_held.items()):
        if path == base or path.startswith(base.rstrip("/") + "/"):
            return holder.verify()
    return True


@contextlib.contextmanager
def _lease(fs: pafs.FileSystem, path: str, sweep: str) -> Iterator[None]:
    import _thread

    renew_s, stale_s = _timing()
    store = lease_store(fs, path)
    mine = _holder()

    def body() -> bytes:
        return json.dumps({**mine, "renewed": time.time()}).encode()

    etag = store.create(body())
    if etag is None:  # someone's lease is there: live, or left by a dead driver
        current, current_etag, age = store.read()
        if current is not None and (age is None or age < stale_s):
            raise _busy(sweep, current)
        etag = store.replace(body(), current_etag) if current is not None else store.create(body())
        if etag is None:  # another launch took it over first
            raise _busy(sweep, store.read()[0] or {})
    holder = _Holder(store, sweep, mine, etag)
    base = path.rsplit("/", 1)[0]
    _held[base] = holder
    stop = threading.Event()

    def lose(reason: str) -> None:
        holder.lost = reason  # the driver says it, once, as it stops (LeaseLost)
        _thread.interrupt_main()  # a KeyboardInterrupt in the driver: the launch stops as on Ctrl-C

    def renew() -> None:
        last_ok = time.monotonic()
        while not stop.wait(renew_s):
            try:
                etag_now = store.replace(body(), holder.etag)
            except Exception as exc:  # the store could not be reached: retry until the lease would go stale
                waited = time.monotonic() - last_ok
                print(f"bench: warning: sweep {sweep}: could not renew the lease {path} "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                      f"retrying ({waited:.0f} s of {stale_s:.0f} s)", file=sys.stderr, flush=True)
                if waited > stale_s - renew_s:
                    lose(f"could not renew its lease {path} for {waited:.0f} s: another launch may take the sweep over")
                    return
                continue
            if etag_now is None:
                taken = None
                with contextlib.suppress(Exception):
                    taken = store.read()[0]
                who = (f"pid {taken.get('pid', '?')} on {taken.get('host', '?')}" if taken else "nobody (it was removed)")
                lose(f"lost its lease {path}: it now belongs to {who}")
                return
            holder.etag, last_ok = etag_now, time.monotonic()

    thread = threading.Thread(target=renew, name="bench-lease", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        if holder.lost:
            raise LeaseLost(f"sweep {sweep}: stopped: {holder.lost}; its checkpoints are kept and nothing "
                            "of the sweep's .tune was deleted") from None
        raise
    finally:
        stop.set()
        thread.join(timeout=renew_s + 30)
        _held.pop(base, None)
        if not holder.lost:
            with contextlib.suppress(Exception):  # a lease we cannot delete goes stale on its own
                store.delete(holder.etag)
    if holder.lost:
        raise LeaseLost(f"sweep {sweep}: stopped: {holder.lost}; its checkpoints are kept and nothing of the "
                        "sweep's .tune was deleted")
