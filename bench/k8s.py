"""Kubernetes manifests for running sweeps on KubeRay.

`render_rayjob` builds what `bench k8s render` prints: a ConfigMap holding the sweep
file and a RayJob whose own RayCluster (a CPU head that runs no trials, an autoscaling
worker group with the GPUs asked for) runs `bench run` on it. `ray_cluster_spec` is
also the spec of the long-lived RayCluster in k8s/raycluster.yaml (a test keeps the two
equal), so both ways of running a sweep get the same pods: non-root, results and data
on the shared `bench-results` claim, MLflow credentials from the `mlflow-auth` Secret,
bucket credentials from the optional `bench-bucket` Secret. No credential is ever
written into a manifest.
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
MLFLOW_SECRET = "mlflow-auth"
BUCKET_SECRET = "bench-bucket"
SWEEP_MOUNT = "/home/ray/sweep"
RAY_UID, RAY_GID = 1000, 100  # the `ray` user of the rayproject/ray images


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


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _env(mlflow_uri: str) -> list[dict[str, Any]]:
    secret = lambda key: {"secretKeyRef": {"name": MLFLOW_SECRET, "key": key}}  # noqa: E731
    return [
        {"name": "BENCH_RESULTS", "value": RESULTS_PATH},
        {"name": "BENCH_DATA_ROOT", "value": DATA_PATH},
        {"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri},
        {"name": "MLFLOW_TRACKING_USERNAME", "valueFrom": secret("admin-username")},
        {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": secret("admin-password")},
    ]


def _volumes(extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [
        {"name": "shared", "persistentVolumeClaim": {"claimName": RESULTS_CLAIM}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},  # Ray's object store lives in /dev/shm
        *(extra or []),
    ]


def _mounts(extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [{"name": "shared", "mountPath": SHARED_MOUNT}, {"name": "dshm", "mountPath": "/dev/shm"}, *(extra or [])]


def _ray_container(name: str, image: str, mlflow_uri: str, resources: dict[str, Any],
                   ports: list[dict[str, Any]] | None = None, mounts: list[dict[str, Any]] | None = None) -> dict:
    container = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": _env(mlflow_uri),
        "envFrom": [{"secretRef": {"name": BUCKET_SECRET, "optional": True}}],  # AWS_* / GOOGLE_* for bucket results
        "resources": resources,
        "volumeMounts": _mounts(mounts),
        "securityContext": _container_security(),
    }
    if ports:
        container["ports"] = ports
    return container


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
        "securityContext": _pod_security(),
        "containers": [_ray_container("ray-worker", image, mlflow_uri,
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
            "securityContext": _container_security(),
            "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
        },
        "headGroupSpec": {
            "serviceType": "ClusterIP",  # reached with kubectl port-forward, never a public LoadBalancer
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {"spec": {
                "securityContext": _pod_security(),
                "containers": [_ray_container(
                    "ray-head", image, mlflow_uri, head_resources,
                    ports=[{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                           {"containerPort": 10001, "name": "client"}],
                    mounts=head_mounts)],
                "volumes": _volumes(head_volumes),
            }},
        },
        "workerGroupSpecs": [{
            "groupName": "gpu" if gpus > 0 else "cpu",
            "replicas": low,
            "minReplicas": low,
            "maxReplicas": high,
            "rayStartParams": {},
            "template": {"spec": worker_pod},
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
            "submitterPodTemplate": {"spec": {
                "restartPolicy": "Never",
                "securityContext": _pod_security(),
                "containers": [{
                    "name": "ray-job-submitter",
                    "image": image,
                    "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                    "securityContext": _container_security(),
                }],
            }},
            "rayClusterSpec": cluster,
        },
    }
    header = (f"# bench k8s render {file_name}: sweep {sweep.name!r}, {len(sweep.trials)} trials\n"
              f"# kubectl apply -f THIS_FILE   (the namespace {namespace} of k8s/ must exist: kubectl apply -k k8s/)\n")
    return header + dump_yaml([config_map, rayjob])


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a sweep file) as literal blocks, so the manifest reads like the file."""


_Dumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def dump_yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120)
