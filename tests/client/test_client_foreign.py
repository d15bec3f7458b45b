"""The experiment on a user's own 224x224 model and pictures: ``layerserve compare --images DIR`` with the
default batch size, against a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from client_support import ServerProcess, layerserve
from PIL import Image

MODEL = "mobilenet_v3_torchscript"


@pytest.fixture(scope="module")
def served_foreign(foreign_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("compare-models")
    (root / MODEL).symlink_to(foreign_repository / MODEL, target_is_directory=True)
    log = tmp_path_factory.mktemp("compare-server") / "server.log"
    with ServerProcess(root, extra_args=["--metrics-port", "-1", "--log-format", "text"], log_path=log) as server:
        yield server.address


def _pictures(root: Path) -> Path:
    """Three classes of photos of various sizes and formats, the ImageFolder layout."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(("cat", "dog", "fish")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (240 + 17 * i, 320 - 9 * i, 3), dtype=np.uint8)
            pixels[..., index] = 255  # a colour cast per class
            Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "fish" / "notes.txt").write_text("not a picture")
    return root


@pytest.mark.slow
def test_compare_on_a_folder_of_pictures_at_224_with_default_flags(served_foreign: str, tmp_path: Path) -> None:
    pictures = _pictures(tmp_path / "pictures")
    shown = layerserve("compare", MODEL, "--images", str(pictures), "--json", server=served_foreign)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["samples"] == 12
    paths = {path["name"]: path for path in report["paths"]}
    for name in ("client chain", "server chain"):
        assert paths[name]["agreement"] == 1.0 and paths[name]["max_abs_diff"] <= 1e-4, paths[name]
    raw = paths["final only, raw image"]["error"]
    assert raw.startswith("INVALID_ARGUMENT: ") and "got FP32 [12,3,224,224]" in raw
    assert {"final only, resize", "final only, pad", "final only, project"} <= set(paths)
    assert report["skip_curve"] and report["skip_matrix"]


@pytest.mark.slow
def test_compare_refusals_are_one_line(served_foreign: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, expected in (
        ([], "lists no samples; pass --images DIR"),
        (["--images", str(empty)], "has no class subfolders"),
        (["--images", str(tmp_path / "absent")], "is not a folder of class subfolders"),
    ):
        shown = layerserve("compare", MODEL, *args, server=served_foreign)
        assert shown.returncode == 2, shown.stderr
        lines = shown.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in shown.stderr, shown.stderr
