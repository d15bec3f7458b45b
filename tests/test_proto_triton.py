"""Triton's config.pbtxt read with protobuf's text format: what is refused and why, the version policy,
and a served endpoint stated back as a config tritonclient reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import tritonclient.grpc as triton

from layerserve.proto import triton as configs
from layerserve.proto.model_config_pb2 import ModelConfig
from layerserve.proto.tensors import TensorSpec


def _config(text: str) -> ModelConfig:
    from google.protobuf import text_format

    return text_format.Parse(text, ModelConfig())


@pytest.mark.parametrize(("text", "reason"), [
    ('platform: "onnxruntime_onnx"', None),
    ('backend: "onnxruntime"', None),
    ('name: "m" platform: "onnxruntime_onnx" backend: "onnxruntime"', None),
    ("", "no platform or backend is not served"),
    ('name: "other" platform: "onnxruntime_onnx"', "config.pbtxt names the model 'other', its folder is 'm'"),
    ('platform: "ensemble" ensemble_scheduling { step [ { model_name: "a" } ] }', "ensemble models are not served"),
    ('platform: "tensorrt_plan"', "platform 'tensorrt_plan' is not served"),
    ('backend: "python"', "backend 'python' is not served"),
    ('platform: "onnxruntime_onnx" sequence_batching { max_sequence_idle_microseconds: 5 }',
     "sequence batching (stateful models) is not supported"),
    ('backend: "onnxruntime" model_transaction_policy { decoupled: true }', "decoupled models"),
    ('backend: "onnxruntime" input [ { name: "x" reshape { shape: [ 4 ] } } ]', "tensor 'x' has a reshape"),
])
def test_refusal_is_one_line_per_unsupported_feature(text: str, reason: str | None) -> None:
    got = configs.refusal(_config(text), "m")
    assert got == reason if reason is None else got.startswith(reason)


def test_read_config_names_the_line_of_a_typo(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text('backend: "onnxruntime"\nmax_batch_sise: 4\n')
    with pytest.raises(configs.ConfigError, match=r"config.pbtxt is not a Triton ModelConfig: 2:1 .*max_batch_sise"):
        configs.read_config(tmp_path)


@pytest.mark.parametrize(("policy", "served"), [
    ("", ["3"]),
    ("version_policy { latest { num_versions: 2 } }", ["2", "3"]),
    ("version_policy { all { } }", ["1", "2", "3"]),
    ("version_policy { specific { versions: [ 1, 3, 9 ] } }", ["1", "3"]),
])
def test_version_policy(tmp_path: Path, policy: str, served: list[str]) -> None:
    for version in ("1", "2", "3", "10x"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "model.onnx").write_bytes(b"")
    (tmp_path / "4").mkdir()  # no model file: not a version
    chosen = configs.served_versions(tmp_path, _config(f'backend: "onnxruntime" {policy}'))
    assert [path.name for path in chosen] == served


def test_config_specs_add_the_batch_dimension_when_max_batch_size_is_set() -> None:
    config = _config('max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, -1 ] } ] '
                     'output [ { name: "y" data_type: TYPE_INT64 dims: [ 1 ] } ]')
    inputs, outputs = configs.config_specs(config)
    assert inputs == (TensorSpec("x", "FP32", (-1, 3, -1)),) and outputs == (TensorSpec("y", "INT64", (-1, 1)),)
    config.max_batch_size = 0
    assert configs.config_specs(config)[0] == (TensorSpec("x", "FP32", (3, -1)),)
    with pytest.raises(configs.ConfigError, match="data type TYPE_STRING is not served"):
        configs.config_specs(_config('input [ { name: "s" data_type: TYPE_STRING dims: [ 1 ] } ]'))


def test_model_config_reads_as_tritons_own_message() -> None:
    x, y = TensorSpec("x", "FP32", (-1, 1, 32, 32)), TensorSpec("y", "FP16", (-1, 10))
    stated = configs.model_config("m", [x], [y], True, 64, True, 500, 2, False)
    theirs = triton.model_config_pb2.ModelConfig.FromString(stated.SerializeToString())  # the wire is the contract
    assert theirs.max_batch_size == 64 and list(theirs.input[0].dims) == [1, 32, 32]
    assert triton.model_config_pb2.DataType.Name(theirs.output[0].data_type) == "TYPE_FP16"
    assert theirs.dynamic_batching.max_queue_delay_microseconds == 500
    assert theirs.instance_group[0].count == 2 and theirs.instance_group[0].kind == theirs.instance_group[0].KIND_CPU
    unlimited = configs.model_config("m", [x], [y], True, 0, True, 500, 1, True)  # no batch limit: Triton's 0
    assert unlimited.max_batch_size == 0 and list(unlimited.input[0].dims) == [-1, 1, 32, 32]
    assert not unlimited.HasField("dynamic_batching") and unlimited.instance_group[0].kind == 1  # KIND_GPU
