"""Kubernetes manifests for running sweeps on KubeRay.

`render_rayjob` builds what `bench k8s render` prints: a ConfigMap holding the sweep
file and a RayJob whose own RayCluster (a CPU head that runs no trials, an autoscaling
worker group with the GPUs asked for) runs `bench run` on it. `ray_cluster_spec` is
also the spec of the long-lived RayCluster in k8s/raycluster.yaml (a test keeps the two
equal), so both ways of running a sweep get the same pods: non-root, read-only root
filesystems (emptyDir for /tmp, where Ray keeps its session), every capability dropped,
RuntimeDefault seccomp, no service-account token (only the autoscaler sidecar gets one,
projected), results and data on the shared `bench-results` claim, bucket credentials from
the optional `bench-bucket` Secret. MLflow credentials go to the head only (the driver
runs there and is the only process that logs to MLflow), and they are those of the
non-admin `mlflow-bench` account, never the admin's. Ray's ports are pinned
(`RAY_NODE_PORTS`), so k8s/network-policy.yaml can admit only those. No credential is
ever written into a manifest.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BenchInputError

NAMESPACE = "bench"
RESULTS_CLAIM = "bench-results"
SHARED_MOUNT = "/shared"
RESULTS_PATH = f"{SHARED_MOUNT}/results"
DATA_PATH = f"{SHARED_MOUNT}/data"
MLFLOW_URI = "http://mlflow:5000"
MLFLOW_SECRET = "mlflow-bench"  # the non-admin account the driver logs with (keys: username, password)
BUCKET_SECRET = "bench-bucket"
SWEEP_MOUNT = "/home/ray/sweep"
RAY_UID, RAY_GID = 1000, 100  # the `ray` user of the rayproject/ray images
#: Pod labels the network policies select on (KubeRay adds its own `ray.io/*` labels as well).
COMPONENT = "app.kubernetes.io/component"
#: Ray's ports, pinned so that the network policy can list them: on the head only, and on every node.
RAY_HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
RAY_NODE_PORTS = {"node-manager-port": 6380, "object-manager-port": 6381, "runtime-env-agent-port": 6382,
                  "dashboard-agent-grpc-port": 6383, "dashboard-agent-listen-port": 52365,
                  "metrics-export-port": 8080}
RAY_WORKER_PORTS = (10002, 10999)  # the worker processes' gRPC ports (min-worker-port, max-worker-port)


def ray_version() -> str:
    return version("ray")


def parse_workers(text: str) -> tuple[int, int]:
    """`MIN:MAX` (or one number for a fixed size) -> (min, max)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", text or "")
    if not match:
        raise BenchInputError(f"--workers {text}: expected MIN:MAX worker pods, e.g. 0:4")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if high < low or high < 1:
        raise BenchInputError(f"--workers {text}: expected MIN <= MAX and MAX >= 1")
    return low, high


def slug(name: str) -> str:
    """A DNS-1123 label from a sweep name (Kubernetes object names)."""
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return text[:40].rstrip("-") or "sweep"


# ---------------------------------------------------------------------------- pods


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RAY_UID, "runAsGroup": RAY_GID, "fsGroup": RAY_GID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> dict[str, Any]:
    """What every container of ours runs with (Pod Security `restricted`, and a read-only root)."""
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def pull_policy(image: str) -> str:
    """IfNotPresent for an image pinned by digest (every node runs the same bytes); Always for a tag,
    so that no node runs a stale cached image under a tag that moved."""
    return "IfNotPresent" if "@sha256:" in image else "Always"


def _env(mlflow_uri: str | None) -> list[dict[str, Any]]:
    env = [
        {"name": "BENCH_RESULTS", "value": RESULTS_PATH},
        {"name": "BENCH_DATA_ROOT", "value": DATA_PATH},
        {"name": "HOME", "value": "/tmp"},  # the root filesystem is read-only: caches (torch, matplotlib) go to /tmp
    ]
    if mlflow_uri is not None:  # the head: the driver logs to MLflow from there, and only from there
        secret = lambda key: {"secretKeyRef": {"name": MLFLOW_SECRET, "key": key}}  # noqa: E731
        env += [
            {"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri},
            {"name": "MLFLOW_TRACKING_USERNAME", "valueFrom": secret("username")},
            {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": secret("password")},
        ]
    return env


def _volumes(extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [
        {"name": "shared", "persistentVolumeClaim": {"claimName": RESULTS_CLAIM}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},  # Ray's object store lives in /dev/shm
        {"name": "tmp", "emptyDir": {}},  # /tmp: Ray's session folder (/tmp/ray), HOME, caches
        *(extra or []),
    ]


def _mounts(extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [{"name": "shared", "mountPath": SHARED_MOUNT}, {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"}, *(extra or [])]


def _ray_container(name: str, image: str, mlflow_uri: str | None, resources: dict[str, Any],
                   ports: list[dict[str, Any]] | None = None, mounts: list[dict[str, Any]] | None = None) -> dict:
    container = {
        "name": name,
        "image": image,
        "imagePullPolicy": pull_policy(image),
        "env": _env(mlflow_uri),
        "envFrom": [{"secretRef": {"name": BUCKET_SECRET, "optional": True}}],  # AWS_* / GOOGLE_* for bucket results
        "resources": resources,
        "volumeMounts": _mounts(mounts),
        "securityContext": container_security(),
    }
    if ports:
        container["ports"] = ports
    return container


def _ray_start_params(head: bool) -> dict[str, str]:
    params = {key: str(port) for key, port in RAY_NODE_PORTS.items()}
    params.update({"min-worker-port": str(RAY_WORKER_PORTS[0]), "max-worker-port": str(RAY_WORKER_PORTS[1])})
    if head:
        params.update({"num-cpus": "0", "dashboard-host": "0.0.0.0"})
    return params


#: The in-tree autoscaler (a sidecar KubeRay adds to the head) is the one container that talks to
#: the Kubernetes API: the head pod mounts no token, and this projected one goes to the sidecar only.
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
_SERVICE_ACCOUNT_VOLUME = {"name": "autoscaler-token", "projected": {"sources": [
    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
]}}


def ray_cluster_spec(
    image: str,
    gpus: int = 1,
    workers: tuple[int, int] = (0, 4),
    worker_cpus: int = 8,
    worker_memory: str = "32Gi",
    mlflow_uri: str = MLFLOW_URI,
    head_mounts: list[dict[str, Any]] | None = None,
    head_volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A RayCluster spec: a CPU head with num-cpus 0 (no trials on it) and one autoscaling worker group."""
    low, high = workers
    head_resources = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}
    worker_limits: dict[str, Any] = {"cpu": str(worker_cpus), "memory": worker_memory}
    if gpus > 0:
        worker_limits["nvidia.com/gpu"] = gpus
    worker_pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        "containers": [_ray_container("ray-worker", image, None,  # workers never log to MLflow: no credentials
                                      {"requests": dict(worker_limits), "limits": dict(worker_limits)})],
        "volumes": _volumes(),
    }
    if gpus > 0:
        worker_pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "rayVersion": ray_version(),
        # Ray's token auth on the dashboard / Jobs API and between nodes; KubeRay keeps the token in the
        # Secret named after the cluster (key auth_token): clients export it as RAY_AUTH_TOKEN.
        "authOptions": {"mode": "token"},
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": 120,
            "securityContext": container_security(),
            "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
            "volumeMounts": [{"name": "autoscaler-token", "mountPath": SERVICE_ACCOUNT_PATH, "readOnly": True}],
        },
        "headGroupSpec": {
            "serviceType": "ClusterIP",  # reached with kubectl port-forward, never a public LoadBalancer
            "rayStartParams": _ray_start_params(head=True),
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "bench", COMPONENT: "ray-head"}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "containers": [_ray_container(
                        "ray-head", image, mlflow_uri, head_resources,
                        ports=[{"containerPort": port, "name": name} for name, port in RAY_HEAD_PORTS.items()],
                        mounts=head_mounts)],
                    "volumes": _volumes([*(head_volumes or []), _SERVICE_ACCOUNT_VOLUME]),
                },
            },
        },
        "workerGroupSpecs": [{
            "groupName": "gpu" if gpus > 0 else "cpu",
            "replicas": low,
            "minReplicas": low,
            "maxReplicas": high,
            "rayStartParams": _ray_start_params(head=False),
            "template": {"metadata": {"labels": {"app.kubernetes.io/name": "bench", COMPONENT: "ray-worker"}},
                         "spec": worker_pod},
        }],
    }


# --------------------------------------------------------------------------- RayJob


def render_rayjob(
    sweep_path: str,
    image: str,
    gpus: int = 1,
    workers: tuple[int, int] = (0, 4),
    namespace: str = NAMESPACE,
    worker_cpus: int = 8,
    worker_memory: str = "32Gi",
    mlflow_uri: str = MLFLOW_URI,
    results: str = RESULTS_PATH,
) -> str:
    """A ConfigMap with the sweep file and a RayJob that runs it on its own autoscaling cluster, as YAML."""
    from bench.spec import load_sweep

    sweep = load_sweep(sweep_path)
    if not image or any(c.isspace() for c in image):
        raise BenchInputError(f"--image {image!r}: expected an image reference, e.g. registry.example.com/bench:0.1.0")
    last = image.rsplit("/", 1)[-1]
    if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
        raise BenchInputError(f"--image {image}: pin the image, by digest (REGISTRY/bench@sha256:...) or by an "
                              "immutable version tag (REGISTRY/bench:0.1.0-GITSHA): every node must run the same code")
    if gpus < 0:
        raise BenchInputError(f"--gpus {gpus}: expected GPUs per worker pod, a whole number >= 0")
    need = sweep.resources.gpus_per_trial
    if need > 0 and gpus == 0:
        raise BenchInputError(f"{sweep_path}: resources.gpus_per_trial is {need:g} but --gpus 0 gives the workers no GPU")
    if need > gpus > 0:
        raise BenchInputError(f"{sweep_path}: resources.gpus_per_trial is {need:g}, more than --gpus {gpus} per worker pod")
    if sweep.resources.cpus_per_trial > worker_cpus:
        raise BenchInputError(
            f"{sweep_path}: resources.cpus_per_trial is {sweep.resources.cpus_per_trial:g}, "
            f"more than --worker-cpus {worker_cpus} per worker pod")
    name = f"bench-{slug(sweep.name)}"
    file_name = Path(sweep_path).name
    if not re.fullmatch(r"[-._a-zA-Z0-9]+", file_name):  # a ConfigMap key
        file_name = "sweep.yaml"
    labels = {"app.kubernetes.io/name": "bench", "app.kubernetes.io/component": "sweep", "bench/sweep": slug(sweep.name)}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-sweep", "namespace": namespace, "labels": labels},
        "data": {file_name: Path(sweep_path).read_text()},
    }
    cluster = ray_cluster_spec(
        image, gpus, workers, worker_cpus, worker_memory, mlflow_uri,
        head_mounts=[{"name": "sweep", "mountPath": SWEEP_MOUNT, "readOnly": True}],
        head_volumes=[{"name": "sweep", "configMap": {"name": f"{name}-sweep"}}],
    )
    entrypoint = f"bench run {SWEEP_MOUNT}/{file_name} --results {results} --mlflow-uri {mlflow_uri}"
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "entrypoint": entrypoint,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "backoffLimit": 2,  # a retry resumes: trials with an ok row on the shared store are skipped
            "submitterPodTemplate": {
                "metadata": {"labels": {"app.kubernetes.io/name": "bench", COMPONENT: "ray-job-submitter"}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "containers": [{
                        "name": "ray-job-submitter",
                        "image": image,
                        "imagePullPolicy": pull_policy(image),
                        "env": [{"name": "HOME", "value": "/tmp"}],
                        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"},
                                      "limits": {"cpu": "1", "memory": "1Gi"}},
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        "securityContext": container_security(),
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
            "rayClusterSpec": cluster,
        },
    }
    header = (f"# bench k8s render {file_name}: sweep {sweep.name!r}, {len(sweep.trials)} trials\n"
              f"# kubectl apply -f THIS_FILE   (the namespace {namespace} of k8s/ must exist: kubectl apply -k k8s/)\n")
    if "@sha256:" not in image:
        header += (f"# image {image} is pinned by tag (pulled Always): keep that tag immutable in the registry, "
                   "or render with --image REGISTRY/bench@sha256:DIGEST\n")
    return header + dump_yaml([config_map, rayjob])


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a sweep file) as literal blocks, so the manifest reads like the file."""


_Dumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def dump_yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120)
