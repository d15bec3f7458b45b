"""The model repository as the server sees it: versions loaded, verified, and their endpoints.

``Repository.load`` reads every ``<name>/<version>/manifest.json`` under the
root, checks each file's sha256 and size against the manifest, creates one ONNX
Runtime session per graph (the full model and each block) and publishes the
endpoints. A version that fails any step is kept as UNAVAILABLE with the reason,
and the others serve. Lookups raise ModelNotFound / ModelUnavailable.

A model folder holding a ``config.pbtxt`` is a Triton model, read as it is
(proto/triton.py): its version policy picks the versions, its config the batching
and the inputs and outputs (checked against the ONNX file). A version that
``layerserve split --triton`` has split carries our manifest beside the model file
and serves its blocks and chain too; one without serves its full graph only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layerserve.proto import manifest as manifests
from layerserve.proto import names, triton
from layerserve.proto.model_config_pb2 import ModelConfig
from layerserve.proto.repository_pb2 import FileRef, ModelManifest, ServingConfig
from layerserve.proto.tensors import format_spec

from . import chains, classification, runtime
from .endpoints import Batching, BatchingOverrides, Endpoint, TensorSpec, answer_row_bytes
from .errors import DeviceUnavailable, ModelNotFound, ModelUnavailable, quoted

log = logging.getLogger(__name__)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"


class LoadError(Exception):
    """Why one model version cannot serve (becomes its UNAVAILABLE reason)."""


@dataclass
class ModelVersion:
    """One version folder: its manifest, graphs and endpoints, or why it is unavailable."""

    name: str
    version: str
    path: Path
    manifest: ModelManifest | None = None
    state: str = UNAVAILABLE
    reason: str = ""
    full: runtime.Graph | None = None
    blocks: list[runtime.Graph] = field(default_factory=list)
    # Which graph runs each block of a chain (server/chains.py); None without blocks.
    block_chain: chains.BlockChain | None = None
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    # The parsed config.pbtxt of a model read from a Triton repository (proto/triton.py), else None.
    config: ModelConfig | None = None
    # Class names by output name, for Triton's classification extension (server/classification.py).
    labels: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def providers(self) -> list[str]:
        """Providers the sessions really use, in preference order, deduplicated."""
        seen: dict[str, None] = {}
        for graph in [self.full, *self.blocks]:
            if graph is not None:
                seen.update(dict.fromkeys(graph.providers))
        return list(seen)

    def run_chain(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run every block in order (the ``<name>.chain`` endpoint)."""
        outputs, _ = self.block_chain.run(feeds)
        return outputs

    def chain(
        self, feeds: Mapping[str, np.ndarray], start: int, stop: int, keep: Sequence[int] = ()
    ) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
        """Run blocks ``[start, stop)``: the last one's outputs, and each kept block's by its index."""
        return self.block_chain.run(feeds, start, stop, keep)

    @property
    def block_names(self) -> list[str]:
        return [names.block_name(self.name, block.name) for block in self.manifest.blocks] if self.manifest else []


def _verify(folder: Path, ref: FileRef) -> Path:
    path = folder / ref.path
    if not ref.path or not path.is_file():
        raise LoadError(f"missing file {ref.path or '(no path in manifest)'}")
    size = path.stat().st_size
    if ref.size_bytes and size != ref.size_bytes:
        raise LoadError(f"{ref.path} is {size} bytes, manifest says {ref.size_bytes}")
    if ref.sha256:
        digest = manifests.sha256_of(path)
        if digest != ref.sha256:
            raise LoadError(f"{ref.path} sha256 {digest[:12]}... does not match manifest {ref.sha256[:12]}...")
    return path


def _specs(protos: Iterator | list) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec.from_proto(spec) for spec in protos)


def _check_io(label: str, graph: runtime.Graph, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
    """The manifest and the ONNX file must agree on names, datatypes and shapes.

    Requests are validated against the manifest and metadata comes from it, so a manifest the file
    does not honour would refuse right inputs, pass wrong ones on to ONNX Runtime (INTERNAL) and
    describe outputs wrongly. Shapes must be equal, -1 in the manifest standing for a free (symbolic)
    dimension in the file.
    """
    for side, declared, actual in (("inputs", inputs, graph.inputs), ("outputs", outputs, graph.outputs)):
        want = [(spec.name, spec.datatype) for spec in declared]
        have = [(spec.name, spec.datatype) for spec in actual]
        if want != have:
            raise LoadError(f"{label} {side}: manifest declares {want}, {graph.path.name} has {have}")
        for spec, real in zip(declared, actual, strict=True):
            if spec.shape != real.shape:
                raise LoadError(f"{label} {side[:-1]} {spec.name!r}: manifest declares {spec}, {graph.path.name} has "
                                f"{format_spec(real.datatype, real.shape)}")


def _batching(manifest: ModelManifest, overrides: BatchingOverrides) -> Batching:
    serving = manifest.serving
    return overrides.applied(bool(serving.dynamic_batching), int(serving.max_batch_size),
                             int(serving.max_queue_delay_us))


def load_version(
    name: str,
    folder: Path,
    options: runtime.RuntimeOptions,
    batching_overrides: BatchingOverrides | None = None,
    verify: bool = True,
    config: ModelConfig | None = None,
) -> ModelVersion:
    """Load one version folder (of a Triton model when ``config`` is its parsed config.pbtxt);
    failures other than DeviceUnavailable become an UNAVAILABLE reason."""
    model = ModelVersion(name=name, version=folder.name, path=folder, config=config)
    try:
        _load_into(model, options, batching_overrides or BatchingOverrides(), verify)
    except DeviceUnavailable:
        raise
    except (LoadError, manifests.ManifestError, triton.ConfigError) as error:
        model.reason = str(error)
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        model.reason = f"{type(error).__name__}: {error}"
    if model.reason:
        model.state, model.full, model.blocks, model.endpoints = UNAVAILABLE, None, [], {}
        model.block_chain = None
        log.error("model unavailable", extra={"fields": {"model": name, "version": folder.name, "reason": model.reason}})
    else:
        model.state = READY
        log.info(
            "model loaded",
            extra={
                "fields": {
                    "model": name,
                    "version": model.version,
                    "providers": model.providers,
                    "endpoints": list(model.endpoints),
                    "batching": vars(next(iter(model.endpoints.values())).batching),
                    "native_seams": len(model.block_chain.native) if model.block_chain else 0,
                    "composed_chain": model.block_chain is not None and model.block_chain.whole is not None,
                }
            },
        )
    return model


def _load_into(
    model: ModelVersion, options: runtime.RuntimeOptions, overrides: BatchingOverrides, verify: bool
) -> None:
    manifest = manifests.read_manifest(model.path) if model.config is None else _triton_manifest(model, model.config)
    model.manifest = manifest
    if manifest.name and manifest.name != model.name:
        raise LoadError(f"manifest names the model {manifest.name!r}, its folder is {model.name!r}")
    if not manifest.blocks and model.config is None:
        raise LoadError("manifest lists no blocks")

    def graph(ref: FileRef) -> runtime.Graph:
        path = _verify(model.path, ref) if verify else model.path / ref.path
        try:
            return runtime.Graph(path, options)
        except DeviceUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            # Name the file as the manifest does: clients see this reason, not the server's paths.
            detail = str(error).replace(str(path), ref.path)
            raise LoadError(f"{ref.path} does not load: {type(error).__name__}: {detail}") from None

    if verify and manifest.HasField("weights"):
        _verify(model.path, manifest.weights)  # the data file every graph reads its weights from
    batching = _batching(manifest, overrides)
    model.full = graph(manifest.full_model)
    if model.config is None:
        inputs, outputs = _specs(manifest.inputs), _specs(manifest.outputs)
        _check_io(model.name, model.full, inputs, outputs)
        model.labels = classification.labels_by_output(manifest.labels, {spec.name: spec.shape for spec in outputs})
    else:
        inputs, outputs = _triton_io(model.config, model.full)
        model.labels = _triton_labels(model.path.parent, model.config)
    add = model.endpoints.__setitem__
    peak = max([manifest.input_bytes_per_sample, *(b.output_bytes_per_sample for b in manifest.blocks)])
    add(model.name, Endpoint(model.name, model.name, model.version, "full", inputs, outputs, batching, model.full.run,
                             peak_row_bytes=peak))
    for index, block in enumerate(manifest.blocks):
        if block.index != index:
            raise LoadError(f"block {block.name!r} has index {block.index}, expected {index}")
        served = names.block_name(model.name, block.name)
        block_graph = graph(block.file)
        block_in, block_out = _specs(block.inputs), _specs(block.outputs)
        _check_io(served, block_graph, block_in, block_out)
        model.blocks.append(block_graph)
        block_peak = max(answer_row_bytes(block_in) or 0, block.output_bytes_per_sample)
        add(served, Endpoint(served, model.name, model.version, "block", block_in, block_out, batching,
                             block_graph.run, block_index=index, peak_row_bytes=block_peak))
    if not manifest.blocks:
        log.warning("Triton model without blocks: serving its full graph only; `layerserve split --triton "
                    "REPOSITORY` adds its blocks and chain", extra={"fields": {"model": model.name,
                                                                                "version": model.version}})
        return
    model.block_chain = chains.build(model.blocks, options)
    chain_name = names.chain_name(model.name)
    first, last = manifest.blocks[0], manifest.blocks[-1]
    add(chain_name, Endpoint(chain_name, model.name, model.version, names.CHAIN, _specs(first.inputs),
                             _specs(last.outputs), batching, model.run_chain, peak_row_bytes=peak))


def _triton_manifest(model: ModelVersion, config: ModelConfig) -> ModelManifest:
    """The manifest a Triton version serves from: the split's (``layerserve split --triton``) when there is
    one, else one naming the model file alone; batching always from config.pbtxt."""
    file = triton.model_file(config)
    if (model.path / manifests.MANIFEST_FILE).is_file():
        manifest = manifests.read_manifest(model.path)
        if manifest.full_model.path != file:
            raise LoadError(f"{manifests.MANIFEST_FILE} was split from {manifest.full_model.path}, "
                            f"{triton.CONFIG_FILE} serves {file}")
    else:
        manifest = ModelManifest(name=model.name, version=model.version, full_model=FileRef(path=file))
    dynamic = config.HasField("dynamic_batching")
    manifest.serving.CopyFrom(ServingConfig(
        max_batch_size=config.max_batch_size, dynamic_batching=dynamic and config.max_batch_size > 0,
        max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
        preferred_batch_sizes=config.dynamic_batching.preferred_batch_size,
    ))
    return manifest


# A label file is the server's own configuration, but a few MB of class names is already absurd.
MOST_LABEL_BYTES = 16 << 20


def _triton_labels(folder: Path, config: ModelConfig) -> dict[str, list[str]]:
    """Each output's class names from its ``label_filename`` (one per line, in the model folder, as Triton
    reads them); LoadError for a file that is missing, too large or not text."""
    found = {}
    for output in config.output:
        if not output.label_filename:
            continue
        path = folder / output.label_filename
        if not path.is_file() or path.stat().st_size > MOST_LABEL_BYTES:
            raise LoadError(f"{triton.CONFIG_FILE}: output {output.name!r} label_filename {output.label_filename!r} "
                            f"is not a file of at most {MOST_LABEL_BYTES >> 20} MB in the model folder")
        try:
            found[output.name] = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise LoadError(f"{triton.CONFIG_FILE}: output {output.name!r} label_filename "
                            f"{output.label_filename!r} is not UTF-8 text") from None
    return found


def _triton_io(config: ModelConfig, graph: runtime.Graph) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs a Triton model serves (proto/triton.py's ``served_io``); LoadError when config.pbtxt
    and the file disagree."""
    try:
        return triton.served_io(config, graph.path.name, graph.inputs, graph.outputs)
    except triton.ConfigError as error:
        raise LoadError(str(error)) from None


def load_triton_model(
    folder: Path, options: runtime.RuntimeOptions, overrides: BatchingOverrides, verify: bool
) -> dict[str, ModelVersion]:
    """Every version of the Triton model in ``folder`` its version policy serves; a model we cannot serve
    is kept as UNAVAILABLE, each of its version folders (or version 1) with the one-line reason."""
    name = folder.name
    try:
        config = triton.read_config(folder)
        reason = triton.refusal(config, name)
        chosen = triton.served_versions(folder, config) if reason is None else []
        if reason is None and not chosen:
            reason = f"no version folder holds {triton.model_file(config)} (under the version policy)"
    except triton.ConfigError as error:
        reason, chosen = str(error), []
    if reason is None:
        return {v.name: load_version(name, v, options, overrides, verify, config) for v in chosen}
    numbered = sorted((child.name for child in folder.iterdir() if child.is_dir() and child.name.isdigit()),
                      key=int) or ["1"]
    log.error("model unavailable", extra={"fields": {"model": name, "versions": numbered, "reason": reason}})
    return {v: ModelVersion(name=name, version=v, path=folder / v, reason=reason) for v in numbered}


class Repository:
    """Every model version under one root, by model name then version.

    Fixed once loaded: no version loads, unloads or changes state afterwards, so every name a ready
    endpoint answers to is resolved once here (``endpoint`` runs on every request).
    """

    def __init__(self, models: dict[str, dict[str, ModelVersion]]) -> None:
        self.models = models
        self._resolved: dict[tuple[str, str], Endpoint] = {}
        for name in models:
            for version in models[name]:
                for served in models[name][version].endpoints:
                    for asked in (version, ""):
                        with contextlib.suppress(ModelNotFound, ModelUnavailable):
                            self._resolved[served, asked] = self._resolve(served, asked)

    @classmethod
    def load(
        cls,
        root: Path,
        options: runtime.RuntimeOptions,
        batching_overrides: BatchingOverrides | None = None,
        verify: bool = True,
    ) -> Repository:
        """Load every version under ``root``; FileNotFoundError if ``root`` is not a folder."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"model repository {root} is not a folder")
        models: dict[str, dict[str, ModelVersion]] = {}
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and triton.is_triton_model(folder):
                models[folder.name] = load_triton_model(folder, options, batching_overrides or BatchingOverrides(),
                                                        verify)
        for name, folder in manifests.iter_repository(root):
            models.setdefault(name, {})[folder.name] = load_version(name, folder, options, batching_overrides, verify)
        if not models:
            versions = [folder.name for folder in manifests.version_folders(root)]
            hint = (f"; {root} holds version folders ({', '.join(versions[:3])}) itself: it is one model's folder, "
                    f"so serve its parent, or move it to <repository>/{root.name}" if versions else "")
            log.warning("model repository is empty%s", hint, extra={"fields": {"root": str(root)}})
        return cls(models)

    def versions(self) -> Iterator[ModelVersion]:
        """Every model version, by name then version number."""
        for name in sorted(self.models):
            for version in sorted(self.models[name], key=int):
                yield self.models[name][version]

    def _owner(self, served: str) -> str:
        name = names.owner(served, self.models)
        if name is not None:
            return name
        raise ModelNotFound(f"unknown model {quoted(served)}; serving {sorted(self.models) or 'nothing'}")

    def model(self, served: str, version: str = "") -> ModelVersion:
        """The version serving ``served`` (empty version: the latest ready one)."""
        name = self._owner(served)
        versions = self.models[name]
        if version:
            if version not in versions:
                raise ModelNotFound(
                    f"model {quoted(served)} has no version {quoted(version)}; "
                    f"versions: {', '.join(sorted(versions, key=int))}"
                )
            chosen = versions[version]
        else:
            ordered = sorted(versions.values(), key=lambda m: int(m.version), reverse=True)
            chosen = next((m for m in ordered if m.ready), ordered[0])
        if not chosen.ready:
            raise ModelUnavailable(f"model {name!r} version {chosen.version} is unavailable: {chosen.reason}")
        return chosen

    def endpoint(self, served: str, version: str = "") -> Endpoint:
        """The endpoint called ``served``; ModelNotFound or ModelUnavailable otherwise."""
        found = self._resolved.get((served, version))
        return found if found is not None else self._resolve(served, version)

    def _resolve(self, served: str, version: str) -> Endpoint:
        model = self.model(served, version)
        try:
            return model.endpoints[served]
        except KeyError:
            raise ModelNotFound(
                f"unknown model {quoted(served)}; {model.name} version {model.version} serves "
                f"{', '.join(model.endpoints)}"
            ) from None

    def is_ready(self, served: str, version: str = "") -> bool:
        """Whether ``served`` can take requests now (unknown names are simply not ready)."""
        try:
            self.endpoint(served, version)
        except (ModelNotFound, ModelUnavailable):
            return False
        return True

    def served_names(self) -> list[str]:
        """Every endpoint name of every version (ready or not: unavailable ones list the full name)."""
        names: dict[str, None] = {}
        for model in self.versions():
            names[model.name] = None
            names.update(dict.fromkeys(model.endpoints))
        return list(names)
