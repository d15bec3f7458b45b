"""The DataPlane alone, without a socket: every method the servicers call, and its one observer.

A servicer converts a request, calls one of these and converts the answer; whatever a transport
(gRPC today, REST next) serves is decided here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from layerserve.export.runtime import cpu_session
from layerserve.server import runtime
from layerserve.server.batching import BatchReport
from layerserve.server.dataplane import DataPlane
from layerserve.server.endpoints import Endpoint
from layerserve.server.errors import AnswerTooLarge, InvalidInput, ModelNotFound, ModelUnavailable
from layerserve.server.repository import Repository


class Recorder:
    """An Observer that keeps what it saw."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int]] = []
        self.rpcs: list[tuple[str, str, str]] = []
        self.drops: list[tuple[str, str]] = []

    def rpc(self, rpc: str, model: str, code: str, seconds: float) -> None:
        self.rpcs.append((rpc, model, code))

    def run(self, endpoint: Endpoint, report: BatchReport) -> None:
        self.runs.append((endpoint.name, report.rows))

    def dropped(self, endpoint: Endpoint, reason: str) -> None:
        self.drops.append((endpoint.name, reason))


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module: the DataPlane's batchers live on the loop that first used them."""
    running = asyncio.new_event_loop()
    yield running
    running.close()


@pytest.fixture(scope="module")
def plane(tiny_repository: Path, loop: asyncio.AbstractEventLoop):
    recorder = Recorder()
    dataplane = DataPlane(Repository.load(tiny_repository, runtime.RuntimeOptions()), instances=1,
                          max_message_bytes=1 << 20, observer=recorder)
    yield dataplane, recorder, loop.run_until_complete
    loop.run_until_complete(dataplane.close())


def _x(rows: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(rows).standard_normal((rows, 1, 8, 8)).astype(np.float32)}


def test_readiness(plane) -> None:
    dataplane, _, run = plane
    assert dataplane.server_ready()
    assert dataplane.model_ready("tiny_cnn") and dataplane.model_ready("tiny_cnn.chain", "1")
    assert not dataplane.model_ready("broken_cnn")  # failed its sha256 check
    assert not dataplane.model_ready("nope")


def test_endpoint_and_metadata(plane) -> None:
    dataplane, _, run = plane
    assert dataplane.endpoint("tiny_cnn.01_stage1").kind == "block"
    with pytest.raises(ModelNotFound):
        dataplane.endpoint("nope")
    with pytest.raises(ModelUnavailable):
        dataplane.endpoint("broken_cnn")
    info = dataplane.metadata("tiny_cnn.00_stem")
    assert (info.name, info.versions, info.platform) == ("tiny_cnn.00_stem", ["1", "2"], "onnxruntime_onnx")
    assert [str(s) for s in info.inputs] == ["FP32 [-1,1,8,8]"] and info.outputs[0].name == "h1"


def test_config_states_each_served_name_as_triton_would(plane) -> None:
    dataplane, _, run = plane
    config = dataplane.config("tiny_cnn.01_stage1", "1")
    assert (config.name, config.platform, config.backend) == ("tiny_cnn.01_stage1", "onnxruntime_onnx", "onnxruntime")
    batching = dataplane.endpoint("tiny_cnn.01_stage1").batching
    assert config.max_batch_size == batching.max_batch_size > 0
    full = dataplane.endpoint("tiny_cnn.01_stage1")
    assert [list(i.dims) for i in config.input] == [list(full.inputs[0].shape[1:])]  # the batch left out
    assert config.instance_group[0].count == 1 and config.instance_group[0].kind == 2  # KIND_CPU
    assert config.HasField("dynamic_batching") == batching.enabled
    with pytest.raises(ModelNotFound):
        dataplane.config("nope")
    with pytest.raises(ModelUnavailable):
        dataplane.config("broken_cnn")


def test_infer_runs_the_endpoint_and_reports_the_run(plane, tiny_repository: Path) -> None:
    dataplane, recorder, run = plane
    x = _x(3)
    result = run(dataplane.infer("tiny_cnn", "2", x))
    (want,) = cpu_session(str(tiny_repository / "tiny_cnn" / "2" / "model.onnx")).run(None, x)
    np.testing.assert_allclose(result.outputs["logits"], want, rtol=1e-5, atol=1e-6)
    assert ("tiny_cnn", 3) in recorder.runs
    with pytest.raises(InvalidInput, match=r"has no input 'x' \(got FP32 \[3,1,8,8\]\); it expects 'h1' FP32"):
        run(dataplane.infer("tiny_cnn.01_stage1", "", x))


def test_chain_with_kept_blocks_and_the_answer_size_check(plane) -> None:
    dataplane, _, run = plane
    model = dataplane.chain_model("tiny_cnn")
    x = _x(2)
    result = run(dataplane.chain(model, "", 0, None, [0, 1], x))
    assert result.blocks_run == ["00_stem", "01_stage1", "02_head"]
    assert [(k.block_index, k.block_name, list(k.outputs)) for k in result.kept] == [
        (0, "00_stem", ["h1"]), (1, "01_stage1", ["h2"])]
    full = run(dataplane.infer("tiny_cnn", "", x)).outputs["logits"]
    np.testing.assert_allclose(result.outputs["logits"], full, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInput, match="Chain takes a model name such as 'tiny_cnn'"):
        dataplane.chain_model("tiny_cnn.chain")
    # Kept activations count in the answer: h1 (1,024 B), h2 (512 B) and logits (40 B) per row. Under a
    # 150,000-byte limit (64 KiB of it the envelope's allowance), 64 rows cannot be answered; 53 can.
    small = DataPlane(dataplane.repository, instances=0, max_message_bytes=150_000)
    with pytest.raises(AnswerTooLarge, match="send at most 53 rows per request"):
        run(small.chain(model, "", 0, None, [0, 1], _x(64)))
    assert run(small.chain(model, "", 0, None, [], _x(64))).outputs["logits"].shape == (64, 10)


def test_statistics_index_and_blocks(plane) -> None:
    dataplane, _, run = plane
    run(dataplane.infer("tiny_cnn.00_stem", "1", _x(2)))
    (entry,) = dataplane.statistics("tiny_cnn.00_stem", "1")
    assert entry.stats.inference_count >= 2 and entry.stats.success.count >= 1
    with pytest.raises(ModelNotFound):
        dataplane.statistics("nope")
    index = {(e.name, e.version): e for e in dataplane.index()}
    assert index[("broken_cnn", "1")].state == "UNAVAILABLE" and "sha256" in index[("broken_cnn", "1")].reason
    assert index[("tiny_cnn.chain", "2")].state == "READY"
    assert all(e.state == "READY" for e in dataplane.index(ready_only=True))
    listing = dataplane.blocks("tiny_cnn.01_stage1")  # any served name finds its model
    assert listing.full_model_name == "tiny_cnn" and listing.chain_model_name == "tiny_cnn.chain"
    assert listing.block_model_names == ["tiny_cnn.00_stem", "tiny_cnn.01_stage1", "tiny_cnn.02_head"]
    assert listing.providers == ["CPUExecutionProvider"] and listing.max_message_bytes == 1 << 20


def test_merged_batches_are_capped_in_bytes(plane, loop: asyncio.AbstractEventLoop) -> None:
    """tiny_cnn's largest activation is h1, 1,024 bytes a row: under a 4,096-byte budget a merged run
    carries at most 4 rows, while one request of 8 rows still runs whole."""
    dataplane, _, run = plane
    recorder = Recorder()
    capped = DataPlane(dataplane.repository, instances=1, max_batch_bytes=4096, observer=recorder)
    assert capped.endpoint("tiny_cnn", "1").merge_rows(4096) == 4

    async def burst() -> None:
        await asyncio.gather(*(capped.infer("tiny_cnn", "1", _x(1)) for _ in range(12)),
                             capped.infer("tiny_cnn", "1", _x(8)))

    run(burst())
    rows = [r for name, r in recorder.runs if name == "tiny_cnn"]
    assert sum(rows) == 20 and 8 in rows
    assert max(r for r in rows if r != 8) <= 4 and any(1 < r <= 4 for r in rows), rows
    run(capped.close())
