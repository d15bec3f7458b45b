"""Settings: flags win over LAYERSERVE_* variables, which win over defaults; bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerserve.server.settings import Settings, from_sources


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
        ({}, {"workers": 0}, "workers must be at least 1, got 0"),
        ({"LAYERSERVE_INSTANCES": "-1"}, {}, "instances must be >= 0"),
    ],
)
def test_bad_values_are_refused(environ, flags, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_sources(flags, environ)
