"""Settings: flags win over LAYERSERVE_* variables, which win over defaults; bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerserve.server.settings import Settings, from_sources, usable_cores


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
        ({}, {"device": "tpu"}, "device must be cpu, cuda or auto, got 'tpu'"),
        ({}, {"workers": -1}, "workers must be >= 1, or 0 / auto for one per usable core, got -1"),
        ({"LAYERSERVE_INSTANCES": "-1"}, {}, "instances must be >= 0"),
    ],
)
def test_bad_values_are_refused(environ, flags, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_sources(flags, environ)


def test_workers_and_instances_default_to_auto_from_the_usable_cores() -> None:
    cores = usable_cores()
    settings = from_sources({}, {})
    assert (settings.workers, settings.instances) == (0, None)
    assert settings.worker_count == cores
    assert settings.instance_count == max(1, cores // cores)
    one = from_sources({"workers": 1}, {})
    assert (one.worker_count, one.instance_count) == (1, cores)
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
