"""``layerserve blocks | infer | chain | compare`` through a subprocess, against the real server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from client_support import free_port, layerserve, samples
from PIL import Image


def test_blocks_lists_models_and_blocks(server: str) -> None:
    listed = layerserve("blocks", "--json", server=server)
    assert listed.returncode == 0, listed.stderr
    assert {"digits_cnn", "digits_cnn.00_stem", "digits_resnet.chain"} <= {m["name"] for m in json.loads(listed.stdout)}
    table = layerserve("blocks", "digits_cnn", server=server)
    assert table.returncode == 0, table.stderr
    assert "03_stage3" in table.stdout and "FP32 [-1,64,4,4]" in table.stdout and "CPUExecutionProvider" in table.stdout


def test_the_server_may_be_named_as_tritonclients_examples_name_it(server: str) -> None:
    """Triton's example clients take ``-u/--url``; so does every layerserve command that talks to a server."""
    for flag in ("-u", "--url"):
        listed = layerserve("blocks", "--json", flag, server)
        assert listed.returncode == 0, listed.stderr
        assert "digits_cnn.chain" in {m["name"] for m in json.loads(listed.stdout)}


def test_infer_from_npy_and_from_a_png(server: str, tmp_path: Path) -> None:
    images, labels = samples("digits_cnn", 4)
    np.save(tmp_path / "four.npy", images)
    answer = layerserve("infer", "digits_cnn", str(tmp_path / "four.npy"), "--json", server=server)
    assert answer.returncode == 0, answer.stderr
    (logits,) = json.loads(answer.stdout)["outputs"].values()
    assert np.array(logits["data"]).argmax(1).tolist() == labels.tolist()
    # The same digit as a picture: dark ink on white paper, 4x larger, through Pillow.
    paper = (255 * (1 - images[0, 0])).astype(np.uint8).repeat(4, 0).repeat(4, 1)
    Image.fromarray(paper).save(tmp_path / "digit.png")
    shown = layerserve("infer", "digits_cnn", str(tmp_path / "digit.png"), server=server)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("│ 0 "))
    assert row.split("│")[2].strip() == str(labels[0])


def test_chain_in_both_places_gives_the_same_logits(server: str, tmp_path: Path) -> None:
    images, _ = samples("digits_resnet", 3)
    np.save(tmp_path / "x.npy", images)
    outputs = {}
    for where in ("client", "server"):
        done = layerserve("chain", "digits_resnet", str(tmp_path / "x.npy"), "--where", where, "--keep", "all", "--json", server=server)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert len(answer["kept"]) == len(answer["blocks_run"]) == 5
        outputs[where] = np.array(next(iter(answer["outputs"].values()))["data"])
    assert np.array_equal(outputs["client"], outputs["server"])
    table = layerserve("chain", "digits_cnn", str(tmp_path / "x.npy"), "--start", "stage3", "--fit", "resize", server=server)
    assert table.returncode == 0 and "03_stage3" in table.stdout and "00_stem" not in table.stdout


def test_shape_errors_exit_non_zero_with_the_servers_message(server: str, tmp_path: Path) -> None:
    images, _ = samples("digits_cnn", 2)
    np.save(tmp_path / "x.npy", images)
    refused = layerserve("chain", "digits_cnn", str(tmp_path / "x.npy"), "--start", "3", server=server)
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr and "expects FP32 [-1,64,4,4], got FP32 [2,1,32,32]" in refused.stderr
    missing = layerserve("infer", "nope", str(tmp_path / "x.npy"), server=server)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    unreachable = layerserve("blocks", "--timeout", "2", server=f"127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1 and "UNAVAILABLE" in unreachable.stderr
    bad_placement = layerserve("blocks", "digits_cnn", "--placement", "0-2", server=server)
    assert bad_placement.returncode == 2 and "RANGE=HOST:PORT" in bad_placement.stderr


def test_compare_prints_the_table_and_writes_the_report(server: str, tmp_path: Path) -> None:
    shown = layerserve("compare", "digits_cnn", "--limit", "120", "--matrix-samples", "24", "--report", str(tmp_path / "r"), server=server)
    assert shown.returncode == 0, shown.stderr
    for text in ("full graph", "client chain", "server chain", "final only, raw image", "final only, project",
                 "INVALID_ARGUMENT", "skip curve", "skip matrix", "wire encodings at each cut"):
        assert text in shown.stdout, text
    assert (tmp_path / "r" / "index.html").is_file() and (tmp_path / "r" / "skip_matrix.png").is_file()
    assert (tmp_path / "r" / "encodings.png").is_file() and "Wire encodings" in (tmp_path / "r" / "index.html").read_text()
    scripted = layerserve("compare", "digits_resnet", "--limit", "120", "--matrix-samples", "0", "--no-curve", "--json", server=server)
    assert scripted.returncode == 0, scripted.stderr
    report = json.loads(scripted.stdout)
    paths = {p["name"]: p for p in report["paths"]}
    assert paths["server chain"]["agreement"] == 1.0 and paths["full graph"]["accuracy"] >= 0.97
    assert paths["final only, raw image"]["error"].startswith("INVALID_ARGUMENT")
    assert report["skip_matrix"] is None and report["start_block"] == "03_stage3"
    encodings = report["encodings"]  # each encoding's cost at each cut, one row per request as a plan sends
    assert encodings["rows"] == 1 and encodings["samples"] == 120 and encodings["encodings"] == ["fp16", "int8"]
    assert encodings["bytes_per_request"]["fp32"] == [4096, 16384, 16384, 8192, 4096]
    assert encodings["bytes_per_request"]["int8"] == [1024, 4096, 4096, 2048, 1024]
    assert min(encodings["agreement"]["fp16"]) >= 0.99 and all(0 <= a <= 1 for a in encodings["agreement"]["int8"])
