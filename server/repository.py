"""The model repository as the server sees it: versions loaded, verified, and their endpoints.

``Repository.load`` reads every ``<name>/<version>/manifest.json`` under the
root, checks each file's sha256 and size against the manifest, creates one ONNX
Runtime session per graph (the full model and each block) and publishes the
endpoints. A version that fails any step is kept as UNAVAILABLE with the reason,
and the others serve. Lookups raise ModelNotFound / ModelUnavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layerserve.proto import manifest as manifests
from layerserve.proto import names
from layerserve.proto.repository_pb2 import FileRef, ModelManifest
from layerserve.proto.tensors import format_spec

from . import runtime
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
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

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
        outputs, _ = runtime.chain(self.blocks, feeds)
        return outputs

    def chain(
        self, feeds: Mapping[str, np.ndarray], start: int, stop: int, keep: Sequence[int] = ()
    ) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
        """Run blocks ``[start, stop)``: the last one's outputs, and each kept block's by its index."""
        outputs, kept = runtime.chain(self.blocks[start:stop], feeds, [index - start for index in keep])
        return outputs, {start + index: values for index, values in kept.items()}

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
) -> ModelVersion:
    """Load one version folder; failures other than DeviceUnavailable become an UNAVAILABLE reason."""
    model = ModelVersion(name=name, version=folder.name, path=folder)
    try:
        _load_into(model, options, batching_overrides or BatchingOverrides(), verify)
    except DeviceUnavailable:
        raise
    except (LoadError, manifests.ManifestError) as error:
        model.reason = str(error)
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        model.reason = f"{type(error).__name__}: {error}"
    if model.reason:
        model.state, model.full, model.blocks, model.endpoints = UNAVAILABLE, None, [], {}
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
                }
            },
        )
    return model


def _load_into(
    model: ModelVersion, options: runtime.RuntimeOptions, overrides: BatchingOverrides, verify: bool
) -> None:
    manifest = manifests.read_manifest(model.path)
    model.manifest = manifest
    if manifest.name and manifest.name != model.name:
        raise LoadError(f"manifest names the model {manifest.name!r}, its folder is {model.name!r}")
    if not manifest.blocks:
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
    inputs, outputs = _specs(manifest.inputs), _specs(manifest.outputs)
    _check_io(model.name, model.full, inputs, outputs)
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
    chain_name = names.chain_name(model.name)
    first, last = manifest.blocks[0], manifest.blocks[-1]
    add(chain_name, Endpoint(chain_name, model.name, model.version, names.CHAIN, _specs(first.inputs),
                             _specs(last.outputs), batching, model.run_chain, peak_row_bytes=peak))


class Repository:
    """Every model version under one root, by model name then version."""

    def __init__(self, models: dict[str, dict[str, ModelVersion]]) -> None:
        self.models = models

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
        for name, folder in manifests.iter_repository(root):
            models.setdefault(name, {})[folder.name] = load_version(name, folder, options, batching_overrides, verify)
        if not models:
            log.warning("model repository is empty", extra={"fields": {"root": str(root)}})
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
