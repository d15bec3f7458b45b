"""Every manifest under deploy/ against KServe's CRD schemas (strict, as pruning is) and the Kubernetes
core schema (kubernetes-validate --strict), plus what the manifests promise each other: ports, probes,
grace periods, prometheus annotations, one InferenceService per built-in model."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import kube
import pytest
import yaml

needs_crds = pytest.mark.skipif(not kube.CRDS.is_dir(), reason=f"KServe CRD schemas not found at {kube.CRDS}")
KSERVE_DOCUMENTS = [(where, doc) for where, doc in kube.documents() if doc.get("kind") in kube.CRD_FILES]
CORE_KINDS = {("v1", "Service")}


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_deploy_holds_kserve_and_core_manifests_only() -> None:
    kinds = {(doc.get("apiVersion"), doc.get("kind")) for _, doc in kube.documents()}
    assert ("serving.kserve.io/v1alpha1", "ServingRuntime") in kinds
    assert ("serving.kserve.io/v1beta1", "InferenceService") in kinds
    assert kinds <= {("serving.kserve.io/v1alpha1", "ServingRuntime"), ("serving.kserve.io/v1beta1", "InferenceService"),
                     *CORE_KINDS}, kinds


@needs_crds
@pytest.mark.parametrize(("where", "document"), KSERVE_DOCUMENTS, ids=[w for w, _ in KSERVE_DOCUMENTS])
def test_manifest_matches_the_kserve_crd_strictly(where: str, document: dict) -> None:
    assert kube.crd_errors(document) == []


def _broken(document: dict, path: str, change: object) -> dict:
    broken = copy.deepcopy(document)
    *parents, last = path.split(".")
    node = broken
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    change(node, int(last) if isinstance(node, list) else last)
    return broken


def _rename(old: str, new: str):
    return lambda node, key: node[key].__setitem__(new, node[key].pop(old))


@needs_crds
@pytest.mark.parametrize(
    ("kind", "path", "change", "error"),
    [
        ("ServingRuntime", "spec.containers.0", _rename("readinessProbe", "readinesProbe"),
         "spec.containers.0: Additional properties are not allowed ('readinesProbe' was unexpected)"),
        ("ServingRuntime", "spec.containers.0.ports.0.containerPort", lambda n, k: n.__setitem__(k, "8001"),
         "spec.containers.0.ports.0.containerPort: '8001' is not of type 'integer'"),
        ("ServingRuntime", "spec.supportedModelFormats.0", lambda n, k: n[k].pop("name"),
         "spec.supportedModelFormats.0: 'name' is a required property"),
        ("InferenceService", "spec", _rename("predictor", "predicter"),
         "spec: Additional properties are not allowed ('predicter' was unexpected)"),
        ("InferenceService", "spec.predictor", _rename("minReplicas", "minReplica"),
         "spec.predictor: Additional properties are not allowed ('minReplica' was unexpected)"),
        ("InferenceService", "metadata.name", lambda n, k: n.__setitem__(k, "digits_cnn"),
         "metadata.name: 'digits_cnn' does not match"),
    ],
)
def test_a_broken_manifest_fails(kind: str, path: str, change, error: str) -> None:
    broken = _broken(kube.of_kind(kind)[0], path, change)
    errors = kube.crd_errors(broken)
    assert any(e.startswith(error) for e in errors), errors


@needs_crds
def test_the_crd_as_published_would_prune_a_typo_silently() -> None:
    # Why the schema is closed here: the open schema accepts the typo, and a cluster would drop the probe.
    broken = _broken(kube.of_kind("ServingRuntime")[0], "spec.containers.0", _rename("readinessProbe", "readinesProbe"))
    assert kube.crd_errors(broken, strict=False) == []
    assert kube.crd_errors(broken) != []


# -- the pods KServe would build, against the Kubernetes core schema ------------------------------------


def _kubernetes_validate(folder: Path, documents: dict[str, dict]) -> subprocess.CompletedProcess[str]:
    for name, document in documents.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(document))
    tool = Path(sys.executable).with_name("kubernetes-validate")
    command = [str(tool) if tool.exists() else shutil.which("kubernetes-validate") or "kubernetes-validate",
               "--strict", "--no-warn", *sorted(str(p) for p in folder.glob("*.yaml"))]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _pods_and_services() -> dict[str, dict]:
    documents = {f"runtime-{rt['metadata']['name']}": kube.runtime_pod(rt, rt["metadata"]["name"])
                 for rt in kube.of_kind("ServingRuntime")}
    documents.update({f"isvc-{isvc['metadata']['name']}": kube.predictor_pod(isvc)
                      for isvc in kube.of_kind("InferenceService")})
    documents.update({f"service-{svc['metadata']['name']}": svc for svc in kube.of_kind("Service")})
    return documents


def test_pod_templates_and_services_match_the_kubernetes_core_schema(tmp_path: Path) -> None:
    result = _kubernetes_validate(tmp_path, _pods_and_services())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(_pods_and_services()), result.stdout


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda c: c.__setitem__("readinesProbe", c.pop("readinessProbe")), "'readinesProbe' was unexpected"),
        (lambda c: c["ports"][0].__setitem__("containerPort", "h2c"), "'h2c' is not of type 'integer'"),
        (lambda c: c["lifecycle"]["preStop"]["sleep"].__setitem__("seconds", "5s"), "'5s' is not of type 'integer'"),
    ],
)
def test_the_core_validator_exits_non_zero_for_a_broken_container(tmp_path: Path, change, error: str) -> None:
    pod = kube.predictor_pod(kube.of_kind("InferenceService")[0])
    change(pod["spec"]["containers"][0])
    result = _kubernetes_validate(tmp_path, {"broken": pod})
    assert result.returncode != 0, result.stdout
    assert error in result.stdout + result.stderr


# -- what the manifests promise each other ----------------------------------------------------------------


@pytest.mark.parametrize("runtime", kube.of_kind("ServingRuntime"), ids=lambda r: r["metadata"]["name"])
def test_runtime_serves_grpc_v2_from_mnt_models_with_probes_on_the_h2c_port(runtime: dict) -> None:
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["grpc-v2"]
    assert [f["name"] for f in spec["supportedModelFormats"]] == ["layerserve"]
    container = spec["containers"][0]
    args = container["args"]
    assert container["command"] == ["layerserve"] and args[0] == "serve"
    assert (_arg(args, "--models"), _arg(args, "--host")) == ("/mnt/models", "0.0.0.0")
    grpc_port, metrics_port = container["ports"]
    # KServe: the first port becomes Service port 80; a name with "h2c" or "grpc" gets appProtocol kubernetes.io/h2c.
    assert grpc_port["name"] == "h2c" and grpc_port["containerPort"] == int(_arg(args, "--port"))
    assert metrics_port["containerPort"] == int(_arg(args, "--metrics-port"))
    assert "grpc" not in metrics_port["name"] and "h2c" not in metrics_port["name"]
    annotations = spec["annotations"]
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert annotations["prometheus.kserve.io/port"] == str(metrics_port["containerPort"])
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port["containerPort"], "service": ""}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])


@pytest.mark.parametrize("isvc", kube.of_kind("InferenceService"), ids=lambda i: i["metadata"]["name"])
def test_inference_service_is_raw_and_outlasts_the_drain(isvc: dict) -> None:
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = isvc["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    model = predictor["model"]
    runtime = kube.runtime_named(model["runtime"])
    assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    container = runtime["spec"]["containers"][0]
    drain = container["lifecycle"]["preStop"]["sleep"]["seconds"] + float(_arg(container["args"], "--grace-s"))
    assert predictor["terminationGracePeriodSeconds"] > drain


def test_every_built_in_model_has_an_inference_service() -> None:
    built_in = {p.name for p in (kube.REPO / "models").iterdir() if p.is_dir()}
    assert built_in == {"digits_cnn", "digits_resnet"}
    # storageUri placeholders name the repository folder of the model they serve: .../<model>-repository
    served = {isvc["spec"]["predictor"]["model"]["storageUri"].rsplit("/", 1)[-1].removesuffix("-repository")
              for isvc in kube.of_kind("InferenceService")
              if isvc["spec"]["predictor"]["model"]["runtime"] == "layerserve"}
    assert served == built_in


def test_headless_services_select_the_predictor_pods_kserve_labels() -> None:
    names = {isvc["metadata"]["name"] for isvc in kube.of_kind("InferenceService")}
    for service in kube.of_kind("Service"):
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"]["app"].removeprefix("isvc.").removesuffix("-predictor") in names
        assert service["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c"
