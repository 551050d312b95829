"""Where a sweep's results and Tune's checkpoints live, and whether the cluster can use them.

`--results` is a local folder or a bucket URI (`s3://BUCKET/PATH`, `gs://BUCKET/PATH`,
resolved by pyarrow's filesystems, so `?endpoint_override=...` and the usual
`AWS_*` variables work). Tune's checkpoints follow the results: they go to
`<results>/<sweep>/.tune` on the same filesystem, so a trial retried on another node
resumes from the checkpoint its first attempt wrote.

Checks that must fail before anything runs (one line, exit 2), because the failures
they prevent are silent or slow: a node-local folder on a multi-node cluster (each node
would write checkpoints the others never see), an SQLite tracking store on a
multi-node cluster, and a trial shape no node has and no autoscaling group can add
(Tune would leave the trials pending forever).

Only orchestration code imports this module: it knows Ray.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from bench.errors import BenchInputError

BUCKET_SCHEMES = ("s3", "gs", "gcs")
PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ResultsLocation:
    """`--results` resolved: the filesystem and the path on it (absolute for a local folder)."""

    uri: str
    filesystem: pafs.FileSystem
    path: str
    is_local: bool

    def tune_storage(self, sweep: str) -> tuple[str, pafs.FileSystem | None]:
        """(storage_path, storage_filesystem) for Tune's checkpoints of this sweep."""
        path = f"{self.path.rstrip('/')}/{sweep}/.tune"
        return path, (None if self.is_local else self.filesystem)

    def remove_tree(self, path: str) -> None:
        """Delete a folder this location holds (a launch's checkpoints); missing is fine. Not if this
        process held the sweep's bucket lease and lost it: the folder is another launch's now."""
        from bench.lock import still_held

        if not still_held(path):
            return
        with contextlib.suppress(OSError, pa.ArrowException):
            self.filesystem.delete_dir(path)

    def remove_if_empty(self, path: str) -> None:
        with contextlib.suppress(OSError, pa.ArrowException):
            if not self.filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                self.filesystem.delete_dir(path)


#: Credentials a URI may carry, and the environment variables that carry them instead.
_USERINFO_ENV = {"s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                 "http": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
                 "https": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
_QUERY_ENV = {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY",
              "session_token": "AWS_SESSION_TOKEN"}
_SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "access_key", "api_key", "apikey")


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """(the URI without credentials, the environment variables that carry them instead).

    `s3://KEY:SECRET@bucket/path`, `s3://bucket/path?secret_key=...` and `http://user:pass@host`
    would otherwise be copied into Tune's persisted param space, error lines, logs and a job's
    printed entrypoint. Credentials are moved to AWS_* (buckets) or MLFLOW_TRACKING_USERNAME /
    _PASSWORD (an MLflow server), which pyarrow, boto3 and MLflow read; other secret-looking
    query parameters are dropped. A URI without credentials comes back unchanged."""
    from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

    if "://" not in uri:
        return uri, {}
    parts = urlsplit(uri)
    scheme, netloc, env = parts.scheme.lower(), parts.netloc, {}
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        names = _USERINFO_ENV.get(scheme)
        if names:
            env.update({names[0]: unquote(user), **({names[1]: unquote(password)} if password else {})})
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = []
    for key, value in query:
        if key.lower() in _QUERY_ENV:
            env[_QUERY_ENV[key.lower()]] = value
        elif not any(word in key.lower() for word in _SECRET_WORDS):
            kept.append((key, value))
    if netloc == parts.netloc and len(kept) == len(query):
        return uri, {}
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept, safe=":/"), parts.fragment)), env


def without_credentials(uri: str) -> str:
    """The URI as it may be shown, logged or persisted."""
    return split_credentials(uri)[0]


_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact(text: str) -> str:
    """A message with every URI in it stripped of credentials (error lines quote what was given)."""
    return _URI_IN_TEXT.sub(lambda m: without_credentials(m.group(0)), text)


def resolve_results(results: str | os.PathLike[str]) -> ResultsLocation:
    """Parse `--results`; a bucket is checked for reachability now rather than after the first trial.

    Credentials in the URI move to the environment (split_credentials) before Ray starts, so its
    workers get them and nothing that is shown or persisted holds them."""
    text, env = split_credentials(os.fspath(results))
    os.environ.update(env)
    if "://" not in text or text.startswith("file://"):
        path = text[len("file://"):] if text.startswith("file://") else text
        return ResultsLocation(text, pafs.LocalFileSystem(), os.path.abspath(path), True)
    scheme = text.split("://", 1)[0].lower()
    if scheme not in BUCKET_SCHEMES:
        raise BenchInputError(
            f"--results {text}: unsupported scheme {scheme}://; expected a folder, s3://BUCKET/PATH or gs://BUCKET/PATH")
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BenchInputError(f"--results {text}: {_first_line(exc)}") from None
    if not path.strip("/"):
        raise BenchInputError(f"--results {text}: expected {scheme}://BUCKET[/PATH]")
    bucket = path.strip("/").split("/", 1)[0]
    try:
        info = filesystem.get_file_info(bucket)
    except (pa.ArrowException, OSError) as exc:
        raise BenchInputError(f"--results {text}: cannot reach the bucket ({_first_line(exc)})") from None
    if info.type == pafs.FileType.NotFound:
        raise BenchInputError(f"--results {text}: bucket {bucket!r} does not exist (or these credentials cannot see it)")
    return ResultsLocation(text, filesystem, path.rstrip("/"), False)


def check_tracking(location: ResultsLocation, mlflow_uri: str | None) -> None:
    """A bucket store has no local folder for the default SQLite tracking file: ask for a server."""
    if location.is_local or mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return
    raise BenchInputError(
        f"--results {location.uri}: results in a bucket need an MLflow tracking server: "
        "pass --mlflow-uri http://HOST:5000 (or set MLFLOW_TRACKING_URI)")


def is_tracking_server(uri: str) -> bool:
    return uri.split("://", 1)[0].lower() in ("http", "https", "databricks")


# --------------------------------------------------------------------------- the cluster


def check_cluster(
    location: ResultsLocation, tracking_uri: str, cpus_per_trial: float, gpus_per_trial: float
) -> None:
    """Fail fast when this Ray cluster cannot run the sweep as asked (call after ray.init)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    check_trial_fits(nodes, cpus_per_trial, gpus_per_trial, autoscaling_groups())
    if len(nodes) > 1:
        if not is_tracking_server(tracking_uri):
            raise BenchInputError(
                f"--mlflow-uri: a Ray cluster of {len(nodes)} nodes logs to an MLflow tracking server "
                f"(--mlflow-uri http://HOST:5000, or MLFLOW_TRACKING_URI), not to {tracking_uri}")
        if location.is_local:
            check_shared_folder(location, nodes)


def autoscaling_groups() -> list[dict[str, Any]] | None:
    """The node groups an autoscaler (KubeRay's included) may add: resources and max count; None if none."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # a private API: without it we only know the nodes that are up
        return None
    if config is None:
        return None
    return [{"name": g.name, "resources": dict(g.resources), "max_count": g.max_count}
            for g in config.node_group_configs]


def check_trial_fits(
    nodes: list[dict[str, Any]], cpus: float, gpus: float, groups: list[dict[str, Any]] | None
) -> None:
    """One trial's CPUs and GPUs must fit on one node that is up or that an autoscaling group can add."""
    need = {"CPU": cpus, "GPU": gpus}

    def fits(resources: dict[str, Any]) -> bool:
        return all(amount <= 0 or float(resources.get(key, 0)) >= amount for key, amount in need.items())

    if any(fits(n.get("Resources", {})) for n in nodes):
        return
    if groups and any(g["max_count"] != 0 and fits(g["resources"]) for g in groups):
        return
    total_gpus = sum(float(n.get("Resources", {}).get("GPU", 0)) for n in nodes)
    total_cpus = sum(float(n.get("Resources", {}).get("CPU", 0)) for n in nodes)
    scaling = "no autoscaling node group can add one" if groups else "it does not autoscale"
    if gpus > 0 and not any(fits({"CPU": cpus, "GPU": float(n.get("Resources", {}).get("GPU", 0))}) for n in nodes):
        raise BenchInputError(
            f"resources.gpus_per_trial: {gpus:g}: no node of this Ray cluster has {gpus:g} GPU "
            f"({total_gpus:g} GPUs in {len(nodes)} nodes) and {scaling}; "
            "use a GPU cluster (--address, bench submit) or set resources.gpus_per_trial: 0")
    raise BenchInputError(
        f"resources.cpus_per_trial: {cpus:g}: no node of this Ray cluster has {cpus:g} CPUs"
        f"{f' and {gpus:g} GPU' if gpus > 0 else ''} ({total_cpus:g} CPUs in {len(nodes)} nodes) and {scaling}")


def check_shared_folder(location: ResultsLocation, nodes: list[dict[str, Any]]) -> None:
    """Every node must see the results folder: a marker written here is looked for on each node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    made = not os.path.exists(location.path)
    os.makedirs(location.path, exist_ok=True)
    marker = os.path.join(location.path, f".bench-shared-{uuid.uuid4().hex}")
    try:
        with open(marker, "w") as handle:
            handle.write("bench: every node must see this file\n")
        sees = ray.remote(num_cpus=0, max_retries=0)(_sees_file)
        refs = [
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
            for n in nodes
        ]
        try:
            seen = ray.get(refs, timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise BenchInputError(
                f"--results {location.uri}: could not check within {PROBE_TIMEOUT_S:g}s that every Ray node "
                "sees this folder") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(marker)
        if made:
            with contextlib.suppress(OSError):
                os.removedirs(location.path)
    blind = [n.get("NodeManagerAddress", n["NodeID"]) for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise BenchInputError(
            f"--results {location.uri}: {location.path} is local to this node; Ray node(s) "
            f"{', '.join(blind)} do not see it. A multi-node cluster needs shared storage: a folder "
            "every node mounts (NFS, a ReadWriteMany volume) or a bucket (s3://..., gs://...)")


def _sees_file(path: str) -> bool:
    return os.path.isfile(path)


# ---------------------------------------------------------------------------- in a trial


def trial_device(gpus_per_trial: float) -> str:
    """The torch device of the GPU Ray assigned to this trial ("cpu" when it asked for none).

    Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first one is cuda:0 in
    this process; if that is turned off, the assigned id is the device index itself.
    """
    if gpus_per_trial <= 0:
        return "cpu"
    import ray

    ids = [str(i) for i in ray.get_gpu_ids()]
    if not ids:
        raise RuntimeError(f"the trial asked for {gpus_per_trial:g} GPU but Ray assigned it none")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    index = visible.index(ids[0]) if ids[0] in visible else int(ids[0])
    return f"cuda:{index}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
