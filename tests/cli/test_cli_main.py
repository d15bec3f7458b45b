"""The console script's last resort: an error no command foresaw is one line and exit code 3."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from layerserve.cli import main as cli_main


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main.main(argv)
    return code, err.getvalue()


def test_an_error_no_command_foresaw_is_one_line_and_the_traceback_is_behind_the_debug_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, such an error (a float64 model meeting ONNX Runtime's missing kernel in the chain check) printed
    a traceback. The split's own work is replaced by a failure here: no input reaches it any more by design."""
    import layerserve.export.cli as export_cli

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something\nno handler\nforesaw " + "x" * 1000)

    monkeypatch.setattr(export_cli, "_split", broken)  # registered afresh by each build_parser()
    monkeypatch.delenv(cli_main.DEBUG_VARIABLE, raising=False)
    source = tmp_path / "model.onnx"
    source.write_bytes(b"")
    code, shown = _run(["split", str(source), "--out", str(tmp_path / "out")])
    assert code == cli_main.UNEXPECTED_EXIT, shown
    assert len(shown.strip().splitlines()) == 1 and "Traceback" not in shown, shown
    assert shown.startswith("layerserve split: unexpected error, RuntimeError: something no handler foresaw"), shown
    assert len(shown) < 600 and "LAYERSERVE_DEBUG=1" in shown
    monkeypatch.setenv(cli_main.DEBUG_VARIABLE, "1")
    with pytest.raises(RuntimeError, match="something"):
        _run(["split", str(source), "--out", str(tmp_path / "out")])
