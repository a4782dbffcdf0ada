"""deploy/kubernetes: every overlay renders, every manifest is a valid Kubernetes object, and the
values that bind the tiers together agree (Service selectors, ports, probes, autoscaler targets,
the frontend's --triton-url/--llm-url, GPU requests, the `bubo` command lines themselves).

The kustomize binary is not on PyPI (the `kustomize` package there is something else), so the
overlays are rendered by `render()` below, which implements exactly the kustomize features they
use: `resources` (files and directories), `patches` (JSON 6902 patch files with a kind+name
target) and `images` (newName/newTag). Anything else in a kustomization.yaml is an error here, so a
feature this renderer does not know cannot be silently ignored. Schemas: kubernetes-validate's
bundled ones (offline), strict mode (unknown fields are errors).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, all_versions

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
# the Kubernetes version the manifests are checked against (kubernetes-validate 1.37.0 bundles 1.25-1.37)
K8S_VERSION = "1.33"
RENDERS = {"base": KUBE / "base", "cpu": KUBE / "overlays" / "cpu", "gpu": KUBE / "overlays" / "gpu"}
PART_OF = "bubogpt"
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of")
GPU = "nvidia.com/gpu"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


# ------------------------------------------------------------------------------------------------
# the renderer: the subset of kustomize these overlays use
# ------------------------------------------------------------------------------------------------

class RenderError(Exception):
    pass


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}


def render(directory: Path) -> list[dict]:
    kfile = directory / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{kfile}: {sorted(unknown)} not supported by tests/test_deploy.py's renderer")
    if (k.get("apiVersion"), k.get("kind")) != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        raise RenderError(f"{kfile}: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    docs: list[dict] = []
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    ids = [(d["kind"], d["metadata"]["name"]) for d in docs]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise RenderError(f"{kfile}: resources defined twice: {sorted(duplicates)}")
    for patch in k.get("patches", []):
        if set(patch) != {"path", "target"} or set(patch["target"]) - {"kind", "name"}:
            raise RenderError(f"{kfile}: a patch needs exactly path + target (kind, name): {patch}")
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        if not isinstance(ops, list):
            raise RenderError(f"{kfile}: {patch['path']} is not a JSON 6902 patch (a list of operations)")
        target = patch["target"]
        hits = [i for i, d in enumerate(docs)
                if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not hits:
            raise RenderError(f"{kfile}: patch {patch['path']} targets nothing: {target}")
        for i in hits:
            try:
                docs[i] = jsonpatch.apply_patch(docs[i], ops)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise RenderError(f"{kfile}: patch {patch['path']} on {target}: {exc}") from exc
    for image in k.get("images", []):
        if "name" not in image or set(image) - {"name", "newName", "newTag"}:
            raise RenderError(f"{kfile}: images entries take name, newName, newTag: {image}")
        hits = 0
        for doc in docs:
            for container in all_containers(doc):
                name, tag = split_image(container["image"])
                if name == image["name"]:
                    new_tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")
                    hits += 1
        if not hits:
            raise RenderError(f"{kfile}: image {image['name']} is used by no container")
    return docs


def split_image(image: str) -> tuple[str, str | None]:
    head, _, last = image.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
        return (f"{head}/{last}" if head else last), tag
    return image, None


def pod_spec(doc: dict) -> dict | None:
    return doc["spec"]["template"]["spec"] if doc["kind"] in WORKLOADS else None


def all_containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return [] if spec is None else spec.get("initContainers", []) + spec["containers"]


@functools.cache
def _rendered(name: str) -> tuple[dict, ...]:
    return tuple(render(RENDERS[name]))


def rendered(name: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(name)))


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(docs: list[dict], deployment: str, name: str, init: bool = False) -> dict:
    spec = pod_spec(of_kind(docs, "Deployment")[deployment])
    found = [c for c in spec.get("initContainers" if init else "containers", []) if c["name"] == name]
    assert len(found) == 1, f"{deployment} has no {'initContainer' if init else 'container'} {name}"
    return found[0]


def flag_values(args: list[str], flag: str) -> list[str]:
    """Every value of `flag` in an argv, in either `--flag value` or `--flag=value` form."""
    values = []
    for i, arg in enumerate(args):
        if arg == flag:
            assert i + 1 < len(args), f"{flag} has no value"
            values.append(args[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


def one_flag(args: list[str], flag: str) -> str:
    values = flag_values(args, flag)
    assert len(values) == 1, f"expected one {flag} in {args}, found {values}"
    return values[0]


def port_number(c: dict, port: int | str) -> int:
    """A container's port by number or name -> its number (fails when the container has no such port)."""
    for p in c.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return p["containerPort"]
    raise AssertionError(f"container {c['name']} has no port {port!r} (ports: {c.get('ports', [])})")


def probes(c: dict) -> dict[str, dict]:
    return {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c}


def probe_port(probe: dict) -> int | str:
    for handler in ("httpGet", "tcpSocket", "grpc"):
        if handler in probe:
            return probe[handler]["port"]
    raise AssertionError(f"probe without a port: {probe}")


def gpus(c: dict) -> tuple[str | None, str | None]:
    resources = c.get("resources", {})
    return resources.get("requests", {}).get(GPU), resources.get("limits", {}).get(GPU)


def sleep_seconds(c: dict) -> int:
    command = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return int(command[1]) if command[:1] == ["sleep"] else 0


def validate_all(docs: list[dict]) -> list[str]:
    errors = []
    for doc in docs:
        try:
            version = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            assert version == K8S_VERSION
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    return errors


def as_pod(spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}


# ------------------------------------------------------------------------------------------------
# the renderer itself
# ------------------------------------------------------------------------------------------------

def _kustomization(tmp_path: Path, body: dict, files: dict[str, object]) -> Path:
    for name, content in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(content))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **body}))
    return tmp_path


CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}}


def test_renderer_applies_json_patches_and_refuses_what_it_does_not_know(tmp_path):
    ok = _kustomization(tmp_path, {"resources": ["cm.yaml"], "patches": [
        {"path": "p.yaml", "target": {"kind": "ConfigMap", "name": "x"}}]},
        {"cm.yaml": CM, "p.yaml": [{"op": "test", "path": "/data/a", "value": "1"},
                                   {"op": "add", "path": "/data/b", "value": "2"}]})
    assert render(ok)[0]["data"] == {"a": "1", "b": "2"}
    # a failing `test` operation (the guard every overlay patch starts with) stops the render
    (tmp_path / "p.yaml").write_text(yaml.safe_dump([{"op": "test", "path": "/data/a", "value": "2"}]))
    with pytest.raises(RenderError, match="p.yaml"):
        render(ok)
    # a target that matches nothing, a kustomize feature the renderer does not implement
    (tmp_path / "p.yaml").write_text(yaml.safe_dump([]))
    _kustomization(tmp_path, {"resources": ["cm.yaml"], "patches": [
        {"path": "p.yaml", "target": {"kind": "ConfigMap", "name": "y"}}]}, {})
    with pytest.raises(RenderError, match="targets nothing"):
        render(tmp_path)
    _kustomization(tmp_path, {"resources": ["cm.yaml"], "namePrefix": "a-"}, {})
    with pytest.raises(RenderError, match="namePrefix"):
        render(tmp_path)


def test_split_image():
    assert split_image("bubogpt/llm:0.1.0-cuda") == ("bubogpt/llm", "0.1.0-cuda")
    assert split_image("registry:5000/bubogpt/llm") == ("registry:5000/bubogpt/llm", None)
    assert split_image("registry:5000/bubogpt/llm:1") == ("registry:5000/bubogpt/llm", "1")


# ------------------------------------------------------------------------------------------------
# schemas and labels
# ------------------------------------------------------------------------------------------------

def test_schema_version_is_bundled():
    assert K8S_VERSION in {".".join(v.split(".")[:2]) for v in all_versions()}


@pytest.mark.parametrize("name", RENDERS)
def test_manifests_are_valid_kubernetes_objects(name):
    docs = rendered(name)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert set(of_kind(docs, "Deployment")) == {"bubo-frontend", "bubo-triton", "bubo-llm"}
    assert validate_all(docs) == []


def test_validation_catches_a_wrong_field():
    docs = rendered("cpu")
    container(docs, "bubo-llm", "llm")["readinessProbe"]["httpGet"]["paht"] = "/health"
    assert len(validate_all(docs)) == 1


@pytest.mark.parametrize("name", RENDERS)
def test_everything_is_labelled_and_selectors_match_their_pods(name):
    docs = rendered(name)
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert all(k in labels for k in LABELS), f"{doc['kind']}/{doc['metadata']['name']} lacks {LABELS}"
        assert labels["app.kubernetes.io/part-of"] == PART_OF
    for name_, dep in of_kind(docs, "Deployment").items():
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(k in pod_labels for k in LABELS)
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), name_
        assert pod_labels["app.kubernetes.io/component"] == dep["metadata"]["labels"]["app.kubernetes.io/component"]
    # no two Deployments' pods answer to the same selector
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in of_kind(docs, "Deployment").values()]
    assert len(set(selectors)) == len(selectors)


# ------------------------------------------------------------------------------------------------
# the facts that bind the tiers together
# ------------------------------------------------------------------------------------------------

def selected_deployments(docs: list[dict], selector: dict) -> list[dict]:
    return [d for d in of_kind(docs, "Deployment").values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]


def service_backend(docs: list[dict], host: str, port: int) -> tuple[dict, int]:
    """Service `host`, port `port` -> (the one Deployment it selects, the container port it reaches)."""
    services = of_kind(docs, "Service")
    assert host in services, f"no Service {host!r} (Services: {sorted(services)})"
    service = services[host]
    ports = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert ports, f"Service {host} has no port {port}"
    (deployment,) = selected_deployments(docs, service["spec"]["selector"])
    target = ports[0].get("targetPort", port)
    numbers = set()
    for c in pod_spec(deployment)["containers"]:
        with contextlib.suppress(AssertionError):
            numbers.add(port_number(c, target))
    assert len(numbers) == 1, f"Service {host}:{port} -> targetPort {target!r} is not one container port"
    return deployment, numbers.pop()


@pytest.mark.parametrize("name", RENDERS)
def test_every_service_selects_one_deployment_and_reaches_a_container_port(name):
    docs = rendered(name)
    for service in of_kind(docs, "Service").values():
        selected = selected_deployments(docs, service["spec"]["selector"])
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} Deployments"
        for p in service["spec"]["ports"]:
            service_backend(docs, service["metadata"]["name"], p["port"])


@pytest.mark.parametrize("name", RENDERS)
def test_every_probe_port_is_a_container_port(name):
    for dep in of_kind(rendered(name), "Deployment").values():
        for c in pod_spec(dep)["containers"]:
            found = probes(c)
            assert {"readinessProbe", "livenessProbe", "startupProbe"} <= set(found), f"{c['name']} lacks a probe"
            for probe in found.values():
                port_number(c, probe_port(probe))


def _http_probe(c: dict, kind: str) -> str:
    return c[kind]["httpGet"]["path"]


@pytest.mark.parametrize("name", RENDERS)
def test_probes_ask_each_server_what_it_answers(name):
    docs = rendered(name)
    frontend = container(docs, "bubo-frontend", "frontend")
    assert frontend["readinessProbe"]["grpc"] == {"port": 50051, "service": "bubo.v1.Bubo"}
    triton = container(docs, "bubo-triton", "triton")
    assert _http_probe(triton, "readinessProbe") == _http_probe(triton, "startupProbe") == "/v2/health/ready"
    assert _http_probe(triton, "livenessProbe") == "/v2/health/live"
    llm = container(docs, "bubo-llm", "llm")
    assert {_http_probe(llm, k) for k in ("startupProbe", "readinessProbe", "livenessProbe")} == {"/health"}
    # slow starts get at least 10 minutes before the kubelet gives up
    for c in (triton, llm):
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, c["name"]


@pytest.mark.parametrize("name", RENDERS)
def test_autoscalers_and_disruption_budgets_target_deployments(name):
    docs = rendered(name)
    deployments = of_kind(docs, "Deployment")
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"bubo-frontend", "bubo-triton"}
    for hpa in hpas.values():
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment") and ref["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        target = deployments[ref["name"]]
        # `replicas` in a Deployment an HPA owns is reset by every `kubectl apply`
        assert "replicas" not in target["spec"], f"{ref['name']} is scaled by an HPA but sets replicas"
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                resource = metric["resource"]["name"]
                for c in pod_spec(target)["containers"]:
                    assert resource in c["resources"]["requests"], f"{c['name']}: utilisation needs a {resource} request"
    metrics = {m["type"]: m for m in hpas["bubo-frontend"]["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    (triton_metric,) = hpas["bubo-triton"]["spec"]["metrics"]
    assert triton_metric["type"] in ("Pods", "External")
    pdbs = of_kind(docs, "PodDisruptionBudget")
    assert len(pdbs) == 3
    for pdb in pdbs.values():
        assert len(selected_deployments(docs, pdb["spec"]["selector"]["matchLabels"])) == 1, pdb["metadata"]["name"]


def test_triton_autoscaler_metric_is_the_adapter_rule():
    hpa = of_kind(rendered("gpu"), "HorizontalPodAutoscaler")["bubo-triton"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = yaml.safe_load((KUBE / "examples" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == metric
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"] and "nv_inference_queue_duration_us" in rule["metricsQuery"]


@pytest.mark.parametrize("name", RENDERS)
def test_frontend_urls_reach_tritons_grpc_port_and_the_llm_server(name):
    docs = rendered(name)
    args = container(docs, "bubo-frontend", "frontend")["args"]
    host, port = one_flag(args, "--triton-url").rsplit(":", 1)
    deployment, target = service_backend(docs, host, int(port))
    assert deployment["metadata"]["name"] == "bubo-triton"
    triton = container(docs, "bubo-triton", "triton")
    assert target == port_number(triton, "grpc") == int(one_flag(triton["args"], "--grpc-port"))
    llm_urls = flag_values(args, "--llm-url")
    assert llm_urls
    for url in llm_urls:
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.path in ("", "/")
        deployment, target = service_backend(docs, parts.hostname, parts.port)
        assert deployment["metadata"]["name"] == "bubo-llm"
        llm = container(docs, "bubo-llm", "llm")
        assert target == port_number(llm, "http") == int(one_flag(llm["args"], "--port"))


@pytest.mark.parametrize("name", RENDERS)
def test_servers_listen_where_their_pods_and_services_say(name):
    docs = rendered(name)
    frontend = container(docs, "bubo-frontend", "frontend")
    for flag, port in (("--port", "grpc"), ("--http-port", "http"), ("--metrics-port", "metrics")):
        assert int(one_flag(frontend["args"], flag)) == port_number(frontend, port)
    triton = container(docs, "bubo-triton", "triton")
    for flag in ("--http-port", "--grpc-port", "--metrics-port"):
        assert int(one_flag(triton["args"], flag)) == port_number(triton, flag[2:-5])
    llm = container(docs, "bubo-llm", "llm")
    assert int(one_flag(llm["args"], "--port")) == port_number(llm, "http")
    # `bubo` servers listen on loopback unless told otherwise: a pod's port would lead nowhere
    for c in (frontend, triton, llm):
        if c["command"] == ["bubo"]:
            assert one_flag(c["args"], "--host") == "0.0.0.0", c["name"]


@pytest.mark.parametrize("name", RENDERS)
def test_prometheus_scrapes_every_tier_on_its_metrics_port(name):
    expected = {"bubo-frontend": ("frontend", "metrics"), "bubo-triton": ("triton", "metrics"), "bubo-llm": ("llm", "http")}
    docs = rendered(name)
    for dep_name, (c_name, port) in expected.items():
        annotations = of_kind(docs, "Deployment")[dep_name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == port_number(container(docs, dep_name, c_name), port)


@pytest.mark.parametrize("name", RENDERS)
def test_graceful_shutdown_fits_in_the_grace_period(name):
    docs = rendered(name)
    for dep in of_kind(docs, "Deployment").values():
        spec = pod_spec(dep)
        for c in spec["containers"]:
            assert spec["terminationGracePeriodSeconds"] > sleep_seconds(c), c["name"]
    frontend = container(docs, "bubo-frontend", "frontend")
    grace = pod_spec(of_kind(docs, "Deployment")["bubo-frontend"])["terminationGracePeriodSeconds"]
    drain = float(one_flag(frontend["args"], "--drain-grace-secs"))
    assert grace > sleep_seconds(frontend) + drain


@pytest.mark.parametrize("name", RENDERS)
def test_pods_run_as_non_root_without_privileges(name):
    for dep in of_kind(rendered(name), "Deployment").values():
        spec = pod_spec(dep)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for c in all_containers(dep):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]
            assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
    frontend = container(rendered(name), "bubo-frontend", "frontend")
    assert frontend["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("name", RENDERS)
def test_volumes_mounts_and_the_model_repository(name):
    docs = rendered(name)
    claims = of_kind(docs, "PersistentVolumeClaim")
    for dep in of_kind(docs, "Deployment").values():
        volumes = {v["name"]: v for v in pod_spec(dep).get("volumes", [])}
        for c in all_containers(dep):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{c['name']} mounts {mount['name']}, which the pod lacks"
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
                assert volume["persistentVolumeClaim"]["readOnly"] is True
    # export writes a staging folder beside --out and renames it: --out must be inside the volume
    export = container(docs, "bubo-triton", "export", init=True)
    triton = container(docs, "bubo-triton", "triton")
    out = one_flag(export["args"], "--out")
    assert out == one_flag(triton["args"], "--model-repository")
    mounts = {m["mountPath"]: m["name"] for m in export["volumeMounts"]}
    parent = str(Path(out).parent)
    assert parent in mounts and out not in mounts, "--out must be a folder inside the repository volume"
    assert {m["name"]: m["mountPath"] for m in triton["volumeMounts"]}[mounts[parent]] == parent


@pytest.mark.parametrize("name", RENDERS)
def test_gpus_are_requested_by_triton_and_the_llm_only_in_the_gpu_overlay(name):
    docs = rendered(name)
    deployments = of_kind(docs, "Deployment")
    for c in all_containers(deployments["bubo-frontend"]):
        assert gpus(c) == (None, None), f"the frontend ({c['name']}) never needs a GPU"
    gpu_containers = [container(docs, "bubo-triton", "triton"), container(docs, "bubo-triton", "export", init=True),
                      container(docs, "bubo-llm", "llm")]
    if name == "gpu":
        for c in gpu_containers:
            assert gpus(c) == ("1", "1"), c["name"]
        for dep in ("bubo-triton", "bubo-llm"):
            tolerations = pod_spec(deployments[dep]).get("tolerations", [])
            assert any(t["key"] == GPU for t in tolerations), dep
    else:
        for dep in deployments.values():
            for c in all_containers(dep):
                assert gpus(c) == (None, None), c["name"]


def test_cpu_overlay_serves_the_built_in_nano_model():
    docs = rendered("cpu")
    for dep in of_kind(docs, "Deployment").values():
        for c in all_containers(dep):
            assert "--weights" not in c["args"], c["name"]
            assert not split_image(c["image"])[1].endswith(("gpu", "cuda")), c["image"]
    assert not of_kind(docs, "PersistentVolumeClaim")
    triton = container(docs, "bubo-triton", "triton")
    assert triton["command"] == ["bubo"] and triton["args"][0] == "triton"
    assert "--backend" not in container(docs, "bubo-triton", "export", init=True)["args"]


def test_gpu_overlay_serves_bubogpt_7b_from_the_models_volume():
    docs = rendered("gpu")
    pvc = of_kind(docs, "PersistentVolumeClaim")["bubo-models"]
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    export = container(docs, "bubo-triton", "export", init=True)
    assert one_flag(export["args"], "--backend") == "tensorrt"
    for c in (export, container(docs, "bubo-frontend", "frontend"), container(docs, "bubo-llm", "llm")):
        assert one_flag(c["args"], "--weights") == "/models/bubogpt", c["name"]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"], c["name"]
    assert one_flag(container(docs, "bubo-llm", "llm")["args"], "--device") == "cuda"
    triton = container(docs, "bubo-triton", "triton")
    assert triton["command"] == ["tritonserver"]
    assert one_flag(triton["args"], "--model-repository") == one_flag(export["args"], "--out")
    # the initContainer that builds the TensorRT plans runs the image that serves them
    assert export["image"] == triton["image"] == "bubogpt/triton:0.1.0-gpu"
    assert container(docs, "bubo-llm", "llm")["image"] == "bubogpt/llm:0.1.0-cuda"
    assert split_image(container(docs, "bubo-frontend", "frontend")["image"])[0] == "bubogpt/frontend"


# ------------------------------------------------------------------------------------------------
# the `bubo` command lines the manifests run, parsed by the real `bubo` parser
# ------------------------------------------------------------------------------------------------

def _bubo_containers() -> list[tuple[str, str, str, bool]]:
    cases = []
    for name in RENDERS:
        for dep in of_kind(rendered(name), "Deployment").values():
            spec = pod_spec(dep)
            for init in (True, False):
                for c in spec.get("initContainers" if init else "containers", []):
                    if c.get("command") == ["bubo"]:
                        cases.append((name, dep["metadata"]["name"], c["name"], init))
    return cases


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


# flags of the remote-tier interface (issue 16) that another change adds to `bubo serve`
REMOTE_TIER_FLAGS = ("--triton-url", "--llm-url")


@pytest.mark.parametrize("name,deployment,c_name,init", _bubo_containers(),
                         ids=lambda v: v if isinstance(v, str) else ("init" if v else "main"))
def test_bubo_command_lines_parse(name, deployment, c_name, init):
    from bubo_cli.main import build_parser

    args = container(rendered(name), deployment, c_name, init)["args"]
    parser = build_parser()
    commands = _subcommands(parser)
    assert args[0] in commands, f"`bubo {args[0]}` (deployment {deployment}) is no bubo command"
    known = {s for a in commands[args[0]]._actions for s in a.option_strings}
    missing = [f for f in REMOTE_TIER_FLAGS if f in args and f not in known]
    assert not missing, f"`bubo {args[0]}` has no {missing}"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"bubo {shlex.join(args)}: {stderr.getvalue().strip()}")


# ------------------------------------------------------------------------------------------------
# examples: the LLM tier under KServe and llm-d
# ------------------------------------------------------------------------------------------------

def _example(name: str) -> dict:
    return yaml.safe_load((KUBE / "examples" / name).read_text())


def _served_flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def test_llminferenceservice_example():
    isvc = _example("llminferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1alpha1", "LLMInferenceService")
    # a custom resource: kubernetes-validate has no schema for it, so only its pod template is checked
    with pytest.raises(SchemaNotFoundError):
        kubernetes_validate.validate(isvc, K8S_VERSION, strict=True)
    assert validate_all([as_pod(isvc["spec"]["template"])]) == []
    claim, _, path = isvc["spec"]["model"]["uri"].removeprefix("pvc://").partition("/")
    assert claim in of_kind(rendered("gpu"), "PersistentVolumeClaim") and path == "bubogpt/llm"
    (main,) = isvc["spec"]["template"]["containers"]
    assert main["name"] == "main" and main["command"] == ["vllm", "serve", "/mnt/models"]
    assert "--enable-prompt-embeds" in main["args"]
    assert one_flag(main["args"], "--served-model-name") == isvc["spec"]["model"]["name"]
    port = int(one_flag(main["args"], "--port"))
    for probe in probes(main).values():
        assert probe["httpGet"] == {"path": "/health", "port": port, "scheme": "HTTP"}
    assert gpus(main) == ("1", "1")
    assert split_image(main["image"])[0] == "bubogpt/llm"


def test_llm_d_values_example():
    values = _example("llm-d-modelservice-values.yaml")
    assert values["modelArtifacts"]["uri"] == _example("llminferenceservice.yaml")["spec"]["model"]["uri"]
    (vllm,) = values["decode"]["containers"]
    assert vllm["modelCommand"] == "vllmServe"
    assert "--enable-prompt-embeds" in vllm["args"]
    assert values["prefill"]["create"] is False and values["routing"]["proxy"]["enabled"] is False
    # the Kubernetes-typed parts of the container, checked as a Pod's container
    pod_container = {k: vllm[k] for k in ("name", "image", "args", "env", "ports", "resources")}
    pod_container.update(vllm["extraConfig"])
    assert validate_all([as_pod({"containers": [pod_container]})]) == []
    kserve_args = _example("llminferenceservice.yaml")["spec"]["template"]["containers"][0]["args"]
    # the chart adds the model path, --port and --served-model-name itself
    assert _served_flags(vllm["args"]) == _served_flags(kserve_args) - {"--port", "--served-model-name"}


def test_examples_carry_what_bubo_llm_server_prints(capsys):
    """The examples pass vLLM every flag `bubo llm-server` would (values differ: they are bubogpt-7b's on
    a GPU, this prints the built-in nano's)."""
    from bubo_cli.main import main

    assert main(["llm-server", "--device", "cuda", "--print-args"]) == 0
    printed = _served_flags(shlex.split(capsys.readouterr().out))
    expected = printed - {"--model", "--host", "--port", "--served-model-name"}
    kserve = _served_flags(_example("llminferenceservice.yaml")["spec"]["template"]["containers"][0]["args"])
    llm_d = _served_flags(_example("llm-d-modelservice-values.yaml")["decode"]["containers"][0]["args"])
    assert expected <= kserve, f"missing from examples/llminferenceservice.yaml: {sorted(expected - kserve)}"
    assert expected <= llm_d, f"missing from examples/llm-d-modelservice-values.yaml: {sorted(expected - llm_d)}"


# ------------------------------------------------------------------------------------------------
# the images: every one the manifests name is built by a Dockerfile of docker/
# ------------------------------------------------------------------------------------------------

DOCKER = ROOT / "docker"
TIER_DOCKERFILES = ("Dockerfile.frontend", "Dockerfile.triton", "Dockerfile.llm")


def _build_commands() -> dict[str, tuple[str, str | None]]:
    """image -> (Dockerfile, target), from the `docker build` lines each Dockerfile's header gives."""
    built = {}
    for name in TIER_DOCKERFILES:
        for line in (DOCKER / name).read_text().splitlines():
            if line.startswith("#") and "docker build" in line:
                argv = shlex.split(line.lstrip("# "))
                assert one_flag(argv, "-f") == f"docker/{name}", line
                targets = flag_values(argv, "--target")
                built[one_flag(argv, "-t")] = (name, targets[0] if targets else None)
    return built


def _stages(dockerfile: str) -> list[str]:
    stages = []
    for line in (DOCKER / dockerfile).read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            stages.append(words[3] if len(words) >= 4 and words[2].upper() == "AS" else "")
    return stages


def test_every_image_in_the_manifests_is_built_by_a_dockerfile():
    built = _build_commands()
    images = {c["image"] for name in ("cpu", "gpu") for dep in of_kind(rendered(name), "Deployment").values()
              for c in all_containers(dep)}
    images.add(_example("llminferenceservice.yaml")["spec"]["template"]["containers"][0]["image"])
    images.add(_example("llm-d-modelservice-values.yaml")["decode"]["containers"][0]["image"])
    assert images - set(built) == set(), f"no Dockerfile builds {sorted(images - set(built))}"
    for image, (dockerfile, target) in built.items():
        stages = _stages(dockerfile)
        assert target is None and len(stages) == 1 or target in stages, f"{dockerfile} has no stage {target} ({image})"


@pytest.mark.parametrize("dockerfile", TIER_DOCKERFILES)
def test_dockerfiles_copy_every_package_and_create_the_pods_user(dockerfile):
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    text = (DOCKER / dockerfile).read_text()
    # per stage: the `bubo` parser imports every layer's commands, so each package must be there
    for stage in text.split("\nFROM ")[1:]:
        copied = {line.split()[1] for line in stage.splitlines() if line.startswith("COPY ")}
        assert packages <= copied, f"{dockerfile}: a stage lacks {sorted(packages - copied)}"
        assert "useradd --uid 10001" in stage and "USER 10001" in stage, f"{dockerfile}: a stage runs as another user"
    uids = {pod_spec(dep)["securityContext"]["runAsUser"] for dep in of_kind(rendered("gpu"), "Deployment").values()}
    assert uids == {10001}
