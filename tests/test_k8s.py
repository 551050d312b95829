"""k8s/ manifests and `bench k8s render`: valid against the Kubernetes and KubeRay schemas, and safe.

Core objects are validated with `kubernetes-validate` (the Kubernetes OpenAPI schemas);
RayCluster / RayJob against the official KubeRay v1.7.0 CRD schemas vendored in
tests/data/kuberay-crds (gzipped), with unknown fields rejected as kubeconform does. The
kustomize build is done here in Python for the features k8s/kustomization.yaml uses
(resources, namespace, labels), so CI needs no kubectl; it was checked to give the same
objects as `kubectl kustomize k8s/` (kustomize v5.5.0).
"""

from __future__ import annotations

import copy
import gzip
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import bench
from bench.k8s import RESULTS_CLAIM, dump_yaml, ray_cluster_spec, ray_version
from bench.cli import main
from tests.conftest import REPO

K8S = REPO / "k8s"
CRDS = Path(__file__).parent / "data" / "kuberay-crds"
K8S_VERSION = "1.33"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
                  "StorageClass"}


def _strict(schema):
    """additionalProperties: false wherever properties are listed (unless unknown fields are preserved)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in out:
            out["additionalProperties"] = False
        if out.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml.gz")):
        crd = yaml.safe_load(gzip.decompress(path.read_bytes()))
        for v in crd["spec"]["versions"]:
            schema = _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
            schema["properties"]["metadata"] = {"type": "object"}
            schemas[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = schema
    return schemas


CRD_SCHEMAS = _crd_schemas()


def validate(doc: dict) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[key])
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize_build(folder: Path) -> list[dict]:
    """What `kubectl kustomize` does with the features our kustomization uses, and a guard against others."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "labels", "resources"}, \
        "kustomization.yaml uses a feature this build does not reproduce: extend kustomize_build"
    docs = []
    for resource in kustomization["resources"]:
        docs += load_docs((folder / resource).read_text())
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED and "namespace" in kustomization:
            doc["metadata"]["namespace"] = kustomization["namespace"]
        for group in kustomization.get("labels", []):
            assert not group.get("includeSelectors") and not group.get("includeTemplates")
            doc["metadata"].setdefault("labels", {}).update(group["pairs"])
    return docs


def render_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`bench k8s render ...` through the CLI's own entry point (in-process: no Ray, no torch to start)."""
    code = main(["k8s", "render", *args])
    out, err = capsys.readouterr()
    return code, out, err


def rendered(capsys, *args: str) -> list[dict]:
    code, out, err = render_cli(capsys, *args)
    assert code == 0, err
    return load_docs(out)


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_every_manifest_validates(path):
    docs = load_docs((K8S / path).read_text())
    assert docs
    for doc in docs:
        validate(doc)


def test_kustomize_build_validates_and_holds_the_deployment():
    docs = kustomize_build(K8S)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("ConfigMap", "mlflow-auth-config"), ("Deployment", "mlflow"), ("Namespace", "bench"),
        ("NetworkPolicy", "same-namespace-only"), ("PersistentVolumeClaim", "bench-results"),
        ("PersistentVolumeClaim", "mlflow-data"), ("RayCluster", "bench"), ("Service", "mlflow"),
    ]
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "bench"
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "bench"


def test_invalid_manifests_are_caught():
    """The validation above can fail: a typo in a RayCluster and in a Service are both reported."""
    cluster = load_docs((K8S / "raycluster.yaml").read_text())[0]
    cluster["spec"]["headGroupSpec"]["rayStartParms"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate(cluster)
    service = next(d for d in load_docs((K8S / "mlflow.yaml").read_text()) if d["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = "five thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(service)


def test_render_prints_a_valid_rayjob_for_the_sweep(capsys):
    docs = rendered(capsys, str(REPO / "sweeps" / "quickstart.yaml"), "--image", "reg.example/bench:1",
                    "--gpus", "2", "--workers", "1:3")
    for doc in docs:
        validate(doc)
    config_map, job = docs
    assert config_map["kind"] == "ConfigMap" and job["kind"] == "RayJob"
    assert config_map["data"]["quickstart.yaml"] == (REPO / "sweeps" / "quickstart.yaml").read_text()
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:3] == ["bench", "run", "/home/ray/sweep/quickstart.yaml"]
    assert command[command.index("--results") + 1] == "/shared/results"
    assert command[command.index("--mlflow-uri") + 1].startswith("http://")
    cluster = job["spec"]["rayClusterSpec"]
    workers = cluster["workerGroupSpecs"][0]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 3)
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 2
    head = cluster["headGroupSpec"]
    head_mounts = {m["mountPath"] for m in head["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/home/ray/sweep" in head_mounts and "/shared" in head_mounts
    assert all(c["image"] == "reg.example/bench:1" for c in _containers(job))


def test_the_rayjob_template_is_what_render_prints(capsys):
    assert rendered(capsys, str(REPO / "sweeps" / "quickstart.yaml"), "--image", "bench:0.1.0") == \
        load_docs((K8S / "rayjob.yaml").read_text().replace("# bench k8s render", "#"))


def test_render_bad_input_is_one_line(tmp_path, capsys):
    gpu_sweep = tmp_path / "gpu.yaml"
    gpu_sweep.write_text("name: g\nresources: {gpus_per_trial: 0.5}\ngrid: {model: [vit_ti]}\n")
    for args, expected in [
        ((str(gpu_sweep), "--image", "b:1", "--gpus", "0"), "gpus_per_trial is 0.5"),
        ((str(gpu_sweep), "--image", "b:1", "--workers", "3:1"), "--workers 3:1"),
        ((str(tmp_path / "missing.yaml"), "--image", "b:1"), "missing.yaml"),
        ((str(gpu_sweep),), "--image"),
    ]:
        code, out, err = render_cli(capsys, *args)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and expected in err, err


# ----------------------------------------------------------------------- the Ray objects


def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    if "submitterPodTemplate" in doc["spec"]:
        pods.append(doc["spec"]["submitterPodTemplate"]["spec"])
    return [c for pod in pods for c in pod["containers"]]


def test_raycluster_shape():
    cluster = load_docs((K8S / "raycluster.yaml").read_text())[0]
    spec = cluster["spec"]
    assert spec == ray_cluster_spec("bench:0.1.0")  # the manifest is what the renderer builds
    assert spec["rayVersion"] == ray_version()
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no trials on the head
    assert head["serviceType"] == "ClusterIP"
    head_limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    worker = gpu["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in worker["tolerations"])
    for pod in (head["template"]["spec"], worker):
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == [RESULTS_CLAIM]  # results and checkpoints on the shared claim


def test_nobody_gets_in_who_should_not():
    docs = kustomize_build(K8S) + load_docs((K8S / "rayjob.yaml").read_text())
    text = "\n".join(dump_yaml([d]) for d in docs)
    assert "LoadBalancer" not in text and "NodePort" not in text and "kind: Ingress" not in text
    assert not re.search(r"(?i)(password|token|secret[-_]?key)\s*[:=]\s*['\"]?[A-Za-z0-9+/]{8,}", text)
    for doc in docs:
        if doc["kind"] == "Service":
            assert doc["spec"]["type"] == "ClusterIP"
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["spec"].get("rayClusterSpec", doc["spec"])["headGroupSpec"]["serviceType"] == "ClusterIP"
            containers = _containers(doc)
            pods = [doc["spec"].get("rayClusterSpec", doc["spec"])["headGroupSpec"]["template"]["spec"]]
        elif doc["kind"] == "Deployment":
            pods = [doc["spec"]["template"]["spec"]]
            containers = pods[0]["containers"]
        else:
            continue
        for pod in pods:
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        for container in containers:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            for env in container.get("env", []):  # credentials only by reference to a Secret
                if re.search(r"(?i)password|token|secret|key", env["name"]):
                    assert "valueFrom" in env and "secretKeyRef" in env["valueFrom"], env
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--app-name=basic-auth" in args
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "mlflow:*" in hosts and "mlflow.bench.svc.cluster.local:*" in hosts and "*" not in hosts
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"] == {} and policy["spec"]["policyTypes"] == ["Ingress"]


# -------------------------------------------------------------------------- the image


def _dockerfile() -> list[str]:
    """Instructions, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (K8S / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_image_matches_the_cluster_and_copies_what_it_installs():
    lines = _dockerfile()
    ray_arg = next(line for line in lines if line.startswith("ARG RAY_VERSION="))
    assert ray_arg.split("=", 1)[1] == ray_version()  # the image's Ray = the client's = rayVersion
    assert re.fullmatch(r"FROM rayproject/ray:\$\{RAY_VERSION\}-py3\d+-gpu", next(l for l in lines if l.startswith("FROM")))
    assert "USER ray" in lines
    copies = [line.split()[-2] if len(line.split()) == 4 else line.split()[2:-1]
              for line in lines if line.startswith("COPY")]
    sources = [s for item in copies for s in ([item] if isinstance(item, str) else item) if not s.startswith("--")]
    assert sorted(sources) == ["README.md", "bench", "pyproject.toml", "sweeps"]
    for source in sources:
        assert (REPO / source).exists()


@pytest.mark.slow
def test_the_dockerfile_pip_line_installs_the_project(tmp_path):
    """Run the Dockerfile's own install line on a copy of exactly what its COPY steps put in the image.

    As a dry run in this venv: pip builds bench from that copy (its build backend from the
    index, as in the image), resolves every dependency and extra, and reports what it
    would install; torch/CUDA wheels are not downloaded here.
    """
    import shutil

    context = tmp_path / "opt-bench"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    for folder in ("bench", "sweeps"):
        shutil.copytree(REPO / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (line,) = [l for l in _dockerfile() if l.startswith("RUN") and "/opt/bench" in l]
    command = shlex.split(line[len("RUN "):].replace("/opt/bench", str(context)))
    assert command[:4] == ["python", "-m", "pip", "install"]
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, *command[1:], "--dry-run", "--quiet", "--report", str(report)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    installs = {i["metadata"]["name"].lower(): i for i in json.loads(report.read_text())["install"]}
    assert installs["bench"]["metadata"]["version"] == bench.__version__
    assert "server" in installs["bench"]["requested_extras"]
