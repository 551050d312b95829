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
        ("ConfigMap", "mlflow-auth-config"), ("ConfigMap", "mlflow-users"), ("Deployment", "mlflow"),
        ("Job", "mlflow-users"), ("Namespace", "bench"),
        ("NetworkPolicy", "default-deny"), ("NetworkPolicy", "dns"), ("NetworkPolicy", "mlflow"),
        ("NetworkPolicy", "mlflow-users"), ("NetworkPolicy", "ray-head"), ("NetworkPolicy", "ray-job-submitter"),
        ("NetworkPolicy", "ray-nodes"), ("PersistentVolumeClaim", "bench-results"),
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
            for env in container.get("env", []):  # credentials only by reference to a Secret
                if re.search(r"(?i)password|token|secret|key", env["name"]):
                    assert "valueFrom" in env and "secretKeyRef" in env["valueFrom"], env
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--app-name=basic-auth" in args
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "mlflow:*" in hosts and "mlflow.bench.svc.cluster.local:*" in hosts and "*" not in hosts


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
    assert sorted(sources) == ["README.md", "bench", "k8s/constraints.txt", "pyproject.toml", "sweeps"]
    for source in sources:
        assert (REPO / source).exists()
    (install,) = [line for line in lines if line.startswith("RUN") and "pip install" in line]
    assert "-c /opt/bench/constraints.txt" in install  # every package at the tested version


def test_the_image_constraints_pin_every_package_to_the_tested_version():
    from importlib.metadata import version as installed

    pins = [line for line in (K8S / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+!\-]+", line) for line in pins), pins
    pinned = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1] for line in pins}
    assert "bench" not in pinned  # the project itself comes from the COPY, not the index
    for package in ("ray", "torch", "mlflow", "pyarrow", "duckdb", "boto3", "pydantic"):
        assert pinned[package] == installed(package), package


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
    for name in ("pyproject.toml", "README.md", "k8s/constraints.txt"):
        shutil.copy(REPO / name, context / Path(name).name)
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


# -------------------------------------------------------------------- who talks to whom


def _selects(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions In/NotIn/Exists) on `labels`."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value, op = labels.get(expr["key"]), expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]) \
                or (op == "Exists" and expr["key"] not in labels) or (op == "DoesNotExist" and expr["key"] in labels):
            return False
    return True


def _peer_matches(peer: dict, pod: dict, policy_namespace: str) -> bool:
    """One `from`/`to` entry against a pod {labels, namespace, ns_labels, ip}; ipBlock peers match outside pods."""
    if "ipBlock" in peer:
        return pod.get("namespace") is None
    if pod.get("namespace") is None:
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], pod["ns_labels"]):
            return False
    elif pod["namespace"] != policy_namespace:
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], pod["labels"])


def _port_matches(rule: dict, port: int) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == "TCP" and p["port"] <= port <= p.get("endPort", p["port"]) for p in ports)


def _direction_allows(policies: list[dict], pod: dict, peer: dict, port: int, kind: str) -> bool:
    """NetworkPolicy semantics for one direction: not isolated (no policy of that type selects the pod),
    or some rule of some selecting policy admits (peer, port)."""
    if pod.get("namespace") is None:  # outside the cluster: no policies of ours
        return True
    selecting = [p for p in policies if p["metadata"]["namespace"] == pod["namespace"]
                 and _selects(p["spec"]["podSelector"] or {"matchLabels": {}}, pod["labels"])
                 and kind.capitalize() in p["spec"]["policyTypes"]]
    if not selecting:
        return True
    key = "from" if kind == "ingress" else "to"
    return any(_port_matches(rule, port) and (key not in rule or any(_peer_matches(e, peer, p["metadata"]["namespace"])
                                                                    for e in rule[key]))
               for p in selecting for rule in p["spec"].get(kind, []))


def connects(policies: list[dict], src: dict, dst: dict, port: int) -> bool:
    return (_direction_allows(policies, src, dst, port, "egress")
            and _direction_allows(policies, dst, src, port, "ingress"))


def _pod(component: str | None = None, namespace: str | None = "bench", **labels) -> dict:
    if component:
        labels["app.kubernetes.io/component"] = component
    return {"labels": labels, "namespace": namespace,
            "ns_labels": {"kubernetes.io/metadata.name": namespace} if namespace else {}}


HEAD, WORKER = _pod("ray-head", **{"app.kubernetes.io/name": "bench"}), _pod("ray-worker")
SUBMITTER, USERS_JOB = _pod("ray-job-submitter"), _pod("mlflow-users")
MLFLOW = _pod(**{"app.kubernetes.io/name": "mlflow"})
OPERATOR = _pod(namespace="kuberay-system", **{"app.kubernetes.io/name": "kuberay-operator"})
IMPOSTOR = _pod(namespace="team-x", **{"app.kubernetes.io/name": "kuberay-operator"})  # labels itself as the operator
STRANGER, OUTSIDE = _pod(**{"app": "debug"}), _pod(namespace=None)
DNS = _pod(namespace="kube-system", **{"k8s-app": "kube-dns"})

CONNECTIONS = [  # (from, to, port, allowed)
    (OPERATOR, HEAD, 8265, True), (OPERATOR, HEAD, 6379, False), (OPERATOR, HEAD, 10001, False),
    (OPERATOR, MLFLOW, 5000, False), (OPERATOR, WORKER, 6380, False),
    (IMPOSTOR, HEAD, 8265, False), (STRANGER, HEAD, 8265, False), (OUTSIDE, HEAD, 8265, False),
    (SUBMITTER, HEAD, 8265, True), (SUBMITTER, HEAD, 6379, False), (SUBMITTER, MLFLOW, 5000, False),
    (WORKER, HEAD, 6379, True), (WORKER, HEAD, 10001, True), (WORKER, HEAD, 6380, True),
    (HEAD, WORKER, 6380, True), (WORKER, WORKER, 10500, True), (WORKER, WORKER, 11000, False),
    (WORKER, WORKER, 22, False), (WORKER, HEAD, 22, False),
    (HEAD, MLFLOW, 5000, True), (WORKER, MLFLOW, 5000, False), (USERS_JOB, MLFLOW, 5000, True),
    (STRANGER, MLFLOW, 5000, False), (OUTSIDE, MLFLOW, 5000, False), (HEAD, MLFLOW, 22, False),
    (WORKER, OUTSIDE, 443, True), (WORKER, OUTSIDE, 80, False), (MLFLOW, OUTSIDE, 443, False),
    (SUBMITTER, OUTSIDE, 443, False), (STRANGER, OUTSIDE, 443, False),
    (WORKER, DNS, 53, True), (MLFLOW, DNS, 53, True),
]


def _policies() -> list[dict]:
    return [d for d in kustomize_build(K8S) if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("src,dst,port,allowed", CONNECTIONS,
                         ids=[f"c{i}" for i in range(len(CONNECTIONS))])
def test_the_network_policies_admit_only_what_each_peer_needs(src, dst, port, allowed):
    assert connects(_policies(), src, dst, port) is allowed


def test_every_policy_rule_names_its_peers_and_ports():
    policies = _policies()
    deny = next(p for p in policies if p["metadata"]["name"] == "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}  # no rule: nothing passes
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from") and rule.get("ports"), policy["metadata"]["name"]  # never "anyone, any port"
            for peer in rule["from"]:
                if "namespaceSelector" in peer:  # another namespace: by its name, which no pod can set
                    assert set(peer["namespaceSelector"]["matchLabels"]) == {"kubernetes.io/metadata.name"}
                    assert peer["podSelector"]["matchLabels"]
        for rule in policy["spec"].get("egress", []):
            assert rule.get("ports"), policy["metadata"]["name"]
    operator = [rule for p in policies for rule in p["spec"].get("ingress", [])
                if any("namespaceSelector" in peer for peer in rule["from"])]
    assert len(operator) == 1 and operator[0]["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert operator[0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
                                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]


def _all_pods(capsys) -> list[tuple[str, dict, list[dict]]]:
    """(what, pod spec, containers incl. the autoscaler sidecar's settings) of every pod we define."""
    docs = kustomize_build(K8S) + load_docs((K8S / "rayjob.yaml").read_text()) + rendered(
        capsys, str(REPO / "sweeps" / "quickstart.yaml"), "--image", "reg.example/bench@sha256:" + "a" * 64)
    pods = []
    for doc in docs:
        if doc["kind"] in ("RayCluster", "RayJob"):
            spec = doc["spec"].get("rayClusterSpec", doc["spec"])
            autoscaler = {"name": "autoscaler", **spec["autoscalerOptions"]}
            head = spec["headGroupSpec"]["template"]["spec"]
            pods.append((f"{doc['kind']} head", head, head["containers"] + [autoscaler]))
            for group in spec["workerGroupSpecs"]:
                pods.append((f"{doc['kind']} worker", group["template"]["spec"], group["template"]["spec"]["containers"]))
            if "submitterPodTemplate" in doc["spec"]:
                sub = doc["spec"]["submitterPodTemplate"]["spec"]
                pods.append(("RayJob submitter", sub, sub["containers"]))
        elif doc["kind"] in ("Deployment", "Job"):
            pod = doc["spec"]["template"]["spec"]
            pods.append((f"{doc['kind']} {doc['metadata']['name']}", pod, pod["containers"]))
    return pods


def test_every_ray_and_mlflow_container_is_locked_down(capsys):
    pods = _all_pods(capsys)
    assert len(pods) == 10  # mlflow, its users Job, RayCluster head+worker, RayJob (file, rendered) head+worker+submitter
    for what, pod, containers in pods:
        pod_ctx = pod["securityContext"]
        for container in containers:
            ctx = container["securityContext"]
            where = f"{what}/{container['name']}"
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
            assert pod_ctx.get("runAsUser", 1000) != 0, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"], where
            assert (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile")) == {"type": "RuntimeDefault"}, where
            if container["name"] != "autoscaler":  # a writable /tmp (Ray's session folder, HOME) from an emptyDir
                tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
                assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"]), where
        if what.startswith("Ray"):
            assert pod["automountServiceAccountToken"] is False, what
            token_mounts = [m for c in containers for m in c.get("volumeMounts", [])
                            if m["mountPath"].startswith("/var/run/secrets/kubernetes.io")]
            assert [m["name"] for m in token_mounts] == (["autoscaler-token"] if "head" in what else []), what
    namespace = load_docs((K8S / "namespace.yaml").read_text())[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_mlflow_credentials_only_on_the_head_and_never_the_admins(capsys):
    for what, pod, containers in _all_pods(capsys):
        refs = {(e["name"], e["valueFrom"]["secretKeyRef"]["name"]) for c in containers for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}
        secrets = {secret for _, secret in refs}
        if what.startswith("Ray") and "head" in what:
            assert refs == {("MLFLOW_TRACKING_USERNAME", "mlflow-bench"), ("MLFLOW_TRACKING_PASSWORD", "mlflow-bench")}
        elif what.startswith("Ray"):  # workers and the submitter never log to MLflow
            assert refs == set() and not any(e["name"].startswith("MLFLOW") for c in containers for e in c.get("env", []))
        else:  # only the server and the Job that creates the bench user see the admin account
            assert "mlflow-auth" in secrets and what in ("Deployment mlflow", "Job mlflow-users"), what


def test_images_are_pinned(capsys):
    for docs, policy in [(load_docs((K8S / "raycluster.yaml").read_text()), "Always"),
                         (rendered(capsys, str(REPO / "sweeps" / "quickstart.yaml"), "--image",
                                   "reg.example/bench@sha256:" + "b" * 64), "IfNotPresent")]:
        assert {c["imagePullPolicy"] for c in _containers(docs[-1])} == {policy}
    for image in ("reg.example/bench", "reg.example/bench:latest", "localhost:5000/bench"):
        code, out, err = render_cli(capsys, str(REPO / "sweeps" / "quickstart.yaml"), "--image", image)
        assert code == 2 and out == "" and err.count("\n") == 1 and "pin the image" in err, err


@pytest.mark.slow
def test_the_mlflow_users_job_creates_a_non_admin_user_that_can_log(tmp_path):
    """The Job's own script against a real `mlflow server --app-name basic-auth` on 127.0.0.1."""
    import os
    import time
    import urllib.request

    from tests.conftest import free_port, stop_mlflow_server

    config_map = next(d for d in load_docs((K8S / "mlflow.yaml").read_text()) if d["metadata"]["name"] == "mlflow-users")
    script = tmp_path / "create_bench_user.py"
    script.write_text(config_map["data"]["create_bench_user.py"])
    ini = next(d for d in load_docs((K8S / "mlflow.yaml").read_text())
               if d["metadata"]["name"] == "mlflow-auth-config")["data"]["basic_auth.ini"]
    (tmp_path / "basic_auth.ini").write_text(ini.replace("sqlite:////mlflow/basic_auth.db",
                                                         f"sqlite:///{tmp_path}/basic_auth.db"))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    admin = {"MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-pw-123456"}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
        env={**os.environ, **admin, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32},
        stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-2000:]
                time.sleep(0.5)
        job_env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": "admin",
                   "MLFLOW_TRACKING_PASSWORD": admin["MLFLOW_AUTH_ADMIN_PASSWORD"],
                   "BENCH_MLFLOW_USERNAME": "bench", "BENCH_MLFLOW_PASSWORD": "bench-pw-123456"}
        for expected in ("created MLflow user bench", "MLflow user bench exists"):  # idempotent
            done = subprocess.run([sys.executable, str(script)], env=job_env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0 and expected in done.stdout, done.stderr[-2000:]
        bench_env = {"MLFLOW_TRACKING_USERNAME": "bench", "MLFLOW_TRACKING_PASSWORD": "bench-pw-123456"}
        probe = textwrap_probe(uri)
        done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **bench_env},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.splitlines()[-2:] == ["logged", "not-admin"], done.stdout
    finally:
        stop_mlflow_server(server)


def textwrap_probe(uri: str) -> str:
    """As the head logs: create an experiment and a run with the bench account; it must not be an admin."""
    return f"""
from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri={uri!r})
experiment = client.create_experiment("sweep-x")
run = client.create_run(experiment)
client.log_metric(run.info.run_id, "test_acc", 0.5)
client.set_terminated(run.info.run_id)
print("logged")
try:
    AuthServiceClient({uri!r}).create_user("intruder", "pw-123456789")
    print("admin")
except MlflowException as exc:
    print("not-admin" if "403" in str(exc) or "PERMISSION_DENIED" in str(exc) else exc)
"""
