"""Settings: flags win over LAYERSERVE_* variables, which win over defaults; bad values are refused
naming the flag or variable; every field's flag and variable give the same value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from layerserve.cli.main import build_parser
from layerserve.server.cli import settings_of
from layerserve.server.launcher import ServerProcess
from layerserve.server.settings import Settings, env_name, flag_name, from_sources, usable_cores


def test_flags_over_environment_over_defaults() -> None:
    environ = {"LAYERSERVE_PORT": "9001", "LAYERSERVE_DYNAMIC_BATCHING": "off", "LAYERSERVE_MODELS": "/srv/m",
               "LAYERSERVE_MAX_QUEUE_DELAY_US": "250"}
    settings = from_sources({"port": 9100, "host": None}, environ)
    assert settings.port == 9100
    assert settings.dynamic_batching is False
    assert settings.models == Path("/srv/m")
    assert settings.max_queue_delay_us == 250
    assert settings.host == Settings().host


@pytest.mark.parametrize(
    ("environ", "flags", "message"),
    [
        ({"LAYERSERVE_ALLOW_SPINNING": "maybe"}, {}, "LAYERSERVE_ALLOW_SPINNING='maybe' is not a boolean"),
        ({}, {"device": "tpu"}, "--device tpu: device must be cpu, cuda or auto, got 'tpu'"),
        ({"LAYERSERVE_DEVICE": "tpu"}, {}, "LAYERSERVE_DEVICE='tpu': device must be cpu, cuda or auto, got 'tpu'"),
        ({}, {"workers": -1}, "--workers -1: workers must be >= 1, or 0 / auto for one per usable core, got -1"),
        ({"LAYERSERVE_INSTANCES": "-1"}, {}, "LAYERSERVE_INSTANCES='-1': instances must be >= 0"),
        ({"LAYERSERVE_PORT": "80x"}, {}, "LAYERSERVE_PORT='80x' is not an integer"),
        ({"LAYERSERVE_WORKERS": "many"}, {}, "LAYERSERVE_WORKERS='many' is not an integer or auto"),
        ({"LAYERSERVE_GRACE_S": "soon"}, {}, "LAYERSERVE_GRACE_S='soon' is not a number"),
        ({"LAYERSERVE_MAX_MESSAGE_BYTES": "0"}, {}, "LAYERSERVE_MAX_MESSAGE_BYTES='0': max_message_bytes must be at least 1"),
        ({"LAYERSERVE_AUTH_HEALTH": "true"}, {}, "LAYERSERVE_AUTH_HEALTH='true': auth_health must be models, all or none"),
        ({}, {"loop": "tokio"}, "--loop tokio: loop must be auto, asyncio or uvloop, got 'tokio'"),
    ],
)
def test_bad_values_are_refused_naming_the_flag_or_variable(environ, flags, message) -> None:
    with pytest.raises(ValueError) as caught:
        from_sources(flags, environ)
    assert str(caught.value).startswith(message), str(caught.value)


def test_workers_and_instances_default_to_auto_from_the_usable_cores() -> None:
    cores = usable_cores()
    settings = from_sources({}, {})
    assert (settings.workers, settings.instances) == (0, None)
    assert settings.worker_count == cores
    assert settings.instance_count == cores  # at most; one at a time while a model's runs are short
    one = from_sources({"workers": 1, "instances": 2}, {})
    assert (one.worker_count, one.instance_count) == (1, 2)
    assert from_sources({}, {"LAYERSERVE_WORKERS": "3", "LAYERSERVE_INSTANCES": "0"}).instance_count == 0
    # "auto" spelled out, in a variable or as a flag (which wins over the variable)
    assert from_sources({}, {"LAYERSERVE_WORKERS": "auto"}).worker_count == cores
    chosen = from_sources({}, {"LAYERSERVE_INSTANCES": "4"}, auto={"instances": None})
    assert chosen.instances is None


def test_one_device_table_gives_the_providers_and_the_choices() -> None:
    from layerserve.server import runtime
    from layerserve.server.errors import DeviceUnavailable

    assert (*runtime.DEVICES, "auto") == runtime.DEVICE_CHOICES
    assert runtime.requested_providers("cpu") == ["CPUExecutionProvider"]
    # "auto" never refuses: the first accelerator this build offers, else the CPU row.
    auto = runtime.resolve_device("auto")
    assert auto.required in runtime.available_providers()
    with pytest.raises(DeviceUnavailable, match=r"unknown device 'tpu' \(choose one of cpu, cuda, auto\)"):
        runtime.resolve_device("tpu")
    if "CUDAExecutionProvider" not in runtime.available_providers():
        with pytest.raises(DeviceUnavailable, match="install onnxruntime-gpu"):
            runtime.resolve_device("cuda")


# (field, text given to the flag and to the variable, value expected, other flags it needs); "auto" given
# as a flag must also win over a variable (test_workers_and_instances_default_to_auto_from_the_usable_cores).
CASES = [
    ("models", "/srv/models", Path("/srv/models"), ()),
    ("host", "0.0.0.0", "0.0.0.0", ()),
    ("port", "9001", 9001, ()),
    ("metrics_port", "-1", -1, ()),
    ("http_port", "-1", -1, ()),
    ("http_port", "8080", 8080, ()),
    ("device", "auto", "auto", ()),
    ("device", "cuda", "cuda", ()),
    ("workers", "3", 3, ()),
    ("workers", "auto", 0, ()),
    ("max_message_bytes", "1048576", 1 << 20, ()),
    ("max_message_bytes", "auto", None, ()),
    ("max_concurrent_streams", "8", 8, ()),
    ("intra_op_threads", "2", 2, ()),
    ("allow_spinning", "true", True, ()),
    ("native_seams", "false", False, ()),
    ("composed_chain", "false", False, ()),
    ("provider_options", "cudnn_conv_algo_search=HEURISTIC,use_tf32=0", "cudnn_conv_algo_search=HEURISTIC,use_tf32=0", ()),
    ("instances", "0", 0, ()),
    ("instances", "auto", None, ()),
    ("dynamic_batching", "off", False, ()),
    ("max_batch_size", "16", 16, ()),
    ("max_queue_delay_us", "250", 250, ()),
    ("max_queue_size", "7", 7, ()),
    ("max_batch_bytes", "1048576", 1 << 20, ()),
    ("grace_s", "2.5", 2.5, ()),
    ("loop", "asyncio", "asyncio", ()),
    ("loop", "uvloop", "uvloop", ()),
    ("log_level", "DEBUG", "DEBUG", ()),
    ("log_format", "text", "text", ()),
    ("verify", "false", False, ()),
    ("tls_cert", "/etc/s.pem", Path("/etc/s.pem"), ("--tls-key", "/etc/s.key")),
    ("tls_key", "/etc/s.key", Path("/etc/s.key"), ("--tls-cert", "/etc/s.pem")),
    ("tls_client_ca", "/etc/ca.pem", Path("/etc/ca.pem"), ("--tls-cert", "/etc/s.pem", "--tls-key", "/etc/s.key")),
    ("token_file", "/etc/tokens", Path("/etc/tokens"), ()),
    ("tokens", "a,b", "a,b", ()),  # no flag: tokens stay out of the process list
    ("auth_health", "all", "all", ()),
    ("auth_health", "none", "none", ()),
]


def test_every_settings_field_has_a_case() -> None:
    assert {field.name for field in dataclasses.fields(Settings)} == {case[0] for case in CASES}


@pytest.mark.parametrize(("field", "text", "expected", "needs"), CASES,
                         ids=[f"{case[0]}={case[1]}" for case in CASES])
def test_each_flag_and_its_variable_give_the_same_setting(field, text, expected, needs) -> None:
    parser = build_parser()
    from_environment = settings_of(parser.parse_args(["serve", *needs]), {env_name(field): text})
    assert getattr(from_environment, field) == expected
    if field == "tokens":
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--tokens", text])
        return
    from_flag = settings_of(parser.parse_args(["serve", *needs, flag_name(field), text]), {})
    assert getattr(from_flag, field) == expected
    assert from_flag == from_environment


def test_the_composed_chain_flag_states_the_bound_the_server_applies(capsys: pytest.CaptureFixture[str]) -> None:
    from layerserve.server import composed

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"unless that session would pack over {composed.PACKABLE_MAX >> 20} MiB of weights" in shown


def test_device_auto_serves_as_a_process(tiny_repository: Path) -> None:
    """``--device auto`` used to crash with KeyError: 'device' (the variable form worked)."""
    with ServerProcess(tiny_repository, ["--device", "auto", "--workers", "1", "--metrics-port", "-1"]) as server, \
            triton.InferenceServerClient(server.address) as client:
        tensor = triton.InferInput("x", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 1, 8, 8), np.float32))
        assert client.infer("tiny_cnn", [tensor]).as_numpy("logits").shape == (1, 10)
