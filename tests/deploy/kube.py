"""The manifests under deploy/, KServe's CRD schemas made strict, and the pods KServe would build from them.

Strict the way an API server is: a structural CRD schema prunes every field it does not declare,
except under ``x-kubernetes-preserve-unknown-fields``, so a misspelt field (``readinesProbe``) is
silently dropped in a cluster. Here every object schema without that marker is closed
(``additionalProperties: false``) so the same typo fails the test instead. CEL rules
(``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRDS = REPO.parent / "shared" / "kserve-crds"  # test data beside the repository (see its README)
CRD_FILES = {
    "ServingRuntime": "servingruntimes.yaml",
    "ClusterServingRuntime": "clusterservingruntimes.yaml",
    "InferenceService": "inferenceservices.yaml",
}
# Root metadata is the API server's ObjectMeta, not part of a CRD's schema: the fields used here, closed.
DNS_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"  # RFC 1035, what KServe requires of an InferenceService name
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": DNS_LABEL},
        "namespace": {"type": "string", "pattern": DNS_LABEL},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
# InferenceService predictor fields that are KServe's own, not the pod's (the rest is a PodSpec).
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget", "autoScaling",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "model", "storageUris",
    "deploymentStrategy", "workerSpec", "labels", "annotations", "name", "storageContainerName",
}
# Fields of an InferenceService's model that KServe reads itself; the rest overrides the runtime's container.
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage",
                       "confidential"}


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/."""
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def documents() -> Iterator[tuple[str, dict]]:
    """(``file#index``, document) for every non-empty YAML document under deploy/."""
    for path in manifest_files():
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document:
                yield f"{path.relative_to(REPO)}#{index}", document


def of_kind(kind: str) -> list[dict]:
    """The deploy/ documents of ``kind``."""
    return [document for _, document in documents() if document.get("kind") == kind]


def closed(schema: dict) -> dict:
    """``schema`` with every object that does not preserve unknown fields closed, as pruning treats it."""
    result = dict(schema)
    if "properties" in schema:
        result["properties"] = {name: closed(sub) for name, sub in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        result["items"] = closed(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        result["additionalProperties"] = closed(schema["additionalProperties"])
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in schema:
            result[keyword] = [closed(sub) for sub in schema[keyword]]
    is_object = schema.get("type") == "object" or "properties" in schema
    if is_object and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False
    return result


@functools.cache
def crd_schema(kind: str, version: str, strict: bool = True) -> dict:
    """The openAPIV3Schema of ``kind`` at ``version`` (strict: closed, with a closed ObjectMeta)."""
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    served = {entry["name"]: entry for entry in crd["spec"]["versions"]}
    schema = copy.deepcopy(served[version]["schema"]["openAPIV3Schema"])
    if strict:
        schema = closed(schema)
        schema["properties"]["metadata"] = OBJECT_META
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return schema


def crd_errors(document: dict, strict: bool = True) -> list[str]:
    """Every schema violation of a KServe ``document``, as ``path: message``; [] when it is valid."""
    group_version, kind = document.get("apiVersion", ""), document.get("kind", "")
    group, _, version = group_version.partition("/")
    if group != "serving.kserve.io" or kind not in CRD_FILES:
        return [f"not a KServe serving.kserve.io kind: {group_version} {kind}"]
    try:
        schema = crd_schema(kind, version, strict)
    except KeyError:
        return [f"{kind} has no version {version!r} in the CRD"]
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]


def runtime_named(name: str) -> dict:
    """The ServingRuntime (or ClusterServingRuntime) ``name`` from deploy/."""
    for document in of_kind("ServingRuntime") + of_kind("ClusterServingRuntime"):
        if document["metadata"]["name"] == name:
            return document
    raise KeyError(f"no ServingRuntime {name!r} under deploy/")


def runtime_pod(runtime: dict, name: str) -> dict:
    """A Pod with the runtime's pod parts: its containers, volumes and pod-level fields."""
    spec = runtime["spec"]
    pod_spec = {"containers": copy.deepcopy(spec["containers"])}
    for key in ("volumes", "nodeSelector", "tolerations", "affinity", "imagePullSecrets", "schedulerName", "hostIPC"):
        if key in spec:
            pod_spec[key] = copy.deepcopy(spec[key])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}


def predictor_pod(isvc: dict) -> dict:
    """The predictor pod KServe builds for ``isvc``: the runtime's pod, the model's container overrides
    merged into the first container, and the predictor's PodSpec fields (KServe's own fields left out)."""
    predictor = isvc["spec"]["predictor"]
    pod = runtime_pod(runtime_named(predictor["model"]["runtime"]), isvc["metadata"]["name"] + "-predictor")
    overrides = {k: v for k, v in predictor["model"].items() if k not in KSERVE_MODEL_FIELDS}
    pod["spec"]["containers"][0].update(copy.deepcopy(overrides))
    pod["spec"].update({k: copy.deepcopy(v) for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS})
    return pod
