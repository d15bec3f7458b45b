"""Triton's model configuration, both ways: config.pbtxt read as it is, and a config stated for what we serve.

A Triton model repository holds ``<model>/config.pbtxt`` (a ModelConfig in protobuf's
text format, ``model_config.proto``) and numeric version folders with the model file
(``<model>/1/model.onnx``). ``read_config`` parses one; ``refusal`` says in one line
why a model cannot be served here (another backend, an ensemble, sequence batching,
...); ``config_specs`` turns its inputs and outputs into our TensorSpecs (the batch
dimension, which Triton's dims leave out when ``max_batch_size`` > 0, as -1);
``served_versions`` applies its version policy. ``model_config`` states the other
way round what an endpoint serves, for the ModelConfig RPC and ``GET .../config``.

Data types are derived from the one datatype table: protocol ``FP32`` is Triton's
``TYPE_FP32``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format

from .manifest import TRITON_CONFIG
from .model_config_pb2 import (
    DataType,
    ModelConfig,
    ModelDynamicBatching,
    ModelInput,
    ModelInstanceGroup,
    ModelOutput,
)
from .tensors import DATATYPES, TensorSpec

CONFIG_FILE = TRITON_CONFIG
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
DEFAULT_MODEL_FILE = "model.onnx"
# Triton's max_batch_size is an int32; a batched endpoint without a limit is stated as max_batch_size 0
# with the batch dimension (-1) in its dims, which is Triton's way of saying "any first dimension".
_TYPE_PREFIX = "TYPE_"


class ConfigError(ValueError):
    """A config.pbtxt that cannot be read or does not describe a model we can serve."""


def datatype_enum(datatype: str) -> int:
    """Triton's DataType value for a protocol datatype (``FP32`` -> TYPE_FP32)."""
    return DataType.Value(_TYPE_PREFIX + datatype)


def datatype_name(value: int) -> str:
    """The protocol datatype of a Triton DataType value; ConfigError for types we do not serve (TYPE_STRING)."""
    name = DataType.Name(value).removeprefix(_TYPE_PREFIX)
    if name not in DATATYPES:
        raise ConfigError(f"data type {DataType.Name(value)} is not served (supported: "
                          f"{', '.join(_TYPE_PREFIX + d for d in DATATYPES)})")
    return name


def is_triton_model(folder: Path) -> bool:
    """Whether ``folder`` is a Triton model folder (it holds a config.pbtxt)."""
    return (Path(folder) / CONFIG_FILE).is_file()


def read_config(folder: Path) -> ModelConfig:
    """Parse ``folder/config.pbtxt``; ConfigError naming the line for text that is not a ModelConfig."""
    path = Path(folder) / CONFIG_FILE
    try:
        return text_format.Parse(path.read_text(), ModelConfig())
    except OSError as error:
        raise ConfigError(f"cannot read {CONFIG_FILE}: {error.strerror or error}") from None
    except text_format.ParseError as error:
        raise ConfigError(f"{CONFIG_FILE} is not a Triton ModelConfig: {error}") from None


def refusal(config: ModelConfig, folder_name: str) -> str | None:
    """Why the model cannot be served here, in one line; None when it can."""
    if config.name and config.name != folder_name:
        return f"{CONFIG_FILE} names the model {config.name!r}, its folder is {folder_name!r}"
    if config.platform == "ensemble" or config.HasField("ensemble_scheduling"):
        return "ensemble models are not served (layerserve runs one ONNX graph per model, and chains its blocks)"
    onnx = config.platform in ("", PLATFORM) and config.backend in ("", BACKEND) and (config.platform or config.backend)
    if not onnx:
        what = f"platform {config.platform!r}" if config.platform else f"backend {config.backend!r}"
        if not config.platform and not config.backend:
            what = "no platform or backend"
        return (f"{what} is not served; layerserve serves ONNX Runtime models "
                f"(platform {PLATFORM!r} or backend {BACKEND!r})")
    if config.HasField("sequence_batching"):
        return "sequence batching (stateful models) is not supported"
    if config.model_transaction_policy.decoupled:
        return "decoupled models (several responses per request) are not supported"
    if config.batch_input or config.batch_output:
        return "batch_input and batch_output (ragged batching) are not supported"
    for tensor in [*config.input, *config.output]:
        if tensor.HasField("reshape"):
            return f"tensor {tensor.name!r} has a reshape, which is not supported"
    if config.max_batch_size < 0:
        return f"max_batch_size must be >= 0, got {config.max_batch_size}"
    return None


def model_file(config: ModelConfig) -> str:
    """The model file inside a version folder: ``default_model_filename`` or model.onnx."""
    return config.default_model_filename or DEFAULT_MODEL_FILE


def served_versions(folder: Path, config: ModelConfig) -> list[Path]:
    """The version folders the config's version policy serves (default: the latest one), oldest first.

    A version folder counts when its name is a number and it holds the model file.
    """
    name = model_file(config)
    found = {int(child.name): child for child in Path(folder).iterdir()
             if child.is_dir() and child.name.isdigit() and (child / name).is_file()}
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        chosen = sorted(found)
    elif choice == "specific":
        chosen = sorted(v for v in set(policy.specific.versions) if v in found)
    else:
        count = policy.latest.num_versions if choice == "latest" else 1
        chosen = sorted(found)[-max(count, 1):] if found else []
    return [found[v] for v in chosen]


def config_specs(config: ModelConfig) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The config's inputs and outputs as full shapes: with ``max_batch_size`` > 0, -1 for the batch first."""
    batch = (-1,) if config.max_batch_size > 0 else ()

    def spec(tensor: ModelInput | ModelOutput) -> TensorSpec:
        return TensorSpec(tensor.name, datatype_name(tensor.data_type), (*batch, *(int(d) for d in tensor.dims)))

    return tuple(spec(t) for t in config.input), tuple(spec(t) for t in config.output)


def served_io(config: ModelConfig, file_name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
              ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs a Triton model serves: config.pbtxt's (every input, any outputs), checked against
    the model file's ``inputs`` and ``outputs``; the file's own when the config lists none. With
    ``max_batch_size`` > 0 the file's first dimension must be a free batch dimension, as Triton requires.
    ConfigError (one line, naming ``file_name``) when they disagree: the server and ``split --triton`` say the same."""
    declared_in, declared_out = config_specs(config)
    label = f"{CONFIG_FILE} vs {file_name}"
    if config.max_batch_size > 0:
        for spec in [*inputs, *outputs]:
            if spec.shape[:1] != (-1,):
                raise ConfigError(f"{label}: max_batch_size {config.max_batch_size} needs a free batch dimension "
                                  f"first, but {spec.name!r} is {spec}")

    def served(side: str, declared: tuple[TensorSpec, ...], actual: Sequence[TensorSpec], every: bool) -> tuple:
        if not declared:
            return tuple(actual)
        by_name = {spec.name: spec for spec in actual}
        for spec in declared:
            real = by_name.get(spec.name)
            if real is None:
                raise ConfigError(f"{label}: {side} {spec.name!r} is declared, the file has "
                                  f"{', '.join(repr(s.name) for s in actual)}")
            if spec.datatype != real.datatype or len(spec.shape) != len(real.shape) or any(
                    want != got and got != -1 for want, got in zip(spec.shape, real.shape, strict=True)):
                raise ConfigError(f"{label}: {side} {spec.name!r} declared {spec}, the file has {real}")
        missing = [spec.name for spec in actual if spec.name not in {s.name for s in declared}]
        if every and missing:
            raise ConfigError(f"{label}: the file's {side}s {missing} are not declared")
        return declared

    return served("input", declared_in, inputs, True), served("output", declared_out, outputs, False)


def model_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    batched: bool,
    max_batch_size: int,
    dynamic_batching: bool,
    max_queue_delay_us: int,
    instances: int,
    gpu: bool,
    base: ModelConfig | None = None,
) -> ModelConfig:
    """The Triton config of what is served as ``name`` (on ``base``, a parsed config.pbtxt, when given).

    ``batched``: the first dimension of every input is the batch. With a batch limit, Triton's form
    is ``max_batch_size`` = the limit and dims without the batch; without one (or unbatched), 0 and
    the full shapes.
    """
    config = ModelConfig()
    if base is not None:
        config.CopyFrom(base)
    stated_batch = max_batch_size if batched and max_batch_size > 0 else 0
    skip = 1 if stated_batch else 0
    config.name = name
    config.platform = PLATFORM
    config.backend = BACKEND
    config.max_batch_size = stated_batch
    del config.input[:]
    del config.output[:]
    for spec in inputs:
        config.input.add(name=spec.name, data_type=datatype_enum(spec.datatype), dims=spec.shape[skip:])
    for spec in outputs:
        config.output.add(name=spec.name, data_type=datatype_enum(spec.datatype), dims=spec.shape[skip:])
    if dynamic_batching and stated_batch:
        preferred = list(config.dynamic_batching.preferred_batch_size) if base is not None else []
        config.dynamic_batching.CopyFrom(ModelDynamicBatching(
            max_queue_delay_microseconds=max_queue_delay_us, preferred_batch_size=preferred))
    else:
        config.ClearField("dynamic_batching")
    kind = ModelInstanceGroup.KIND_GPU if gpu else ModelInstanceGroup.KIND_CPU
    del config.instance_group[:]
    config.instance_group.add(name=name, kind=kind, count=max(instances, 1))
    return config
