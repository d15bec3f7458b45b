"""Native seams: chains hand ONNX Runtime's blocked tensors from block to block, and answer exactly as
the plain blocks do, for every range and every kept block; a probe that disagrees keeps a chain plain.
The chain of every block runs as one composed session, kept only where it answers as the blocks do."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import onnx
import pytest

from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc
from layerserve.proto import tensors
from layerserve.server import chains, composed, repository, runtime, seams
from layerserve.server.endpoints import TensorSpec
from layerserve.server.launcher import ServerProcess

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits_cnn" / "1"


def _load(folder: Path, optimized_dir: Path | None, name: str = "digits_cnn",
          composed_chain: bool = True) -> repository.ModelVersion:
    options = runtime.RuntimeOptions("cpu", optimized_dir=optimized_dir, composed_chain=composed_chain)
    model = repository.load_version(name, folder, options)
    assert model.ready, model.reason
    return model


def _ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]


def _weight_files(path: Path) -> set[str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {entry.value for tensor in graph.initializer for entry in tensor.external_data if entry.key == "location"}


def _same(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> bool:
    return want.keys() == got.keys() and all(np.array_equal(want[name], got[name]) for name in want)


def test_the_digits_seams_are_native_and_their_variants_drop_only_the_layout_changes(tmp_path: Path) -> None:
    model = _load(DIGITS, tmp_path)
    chain = model.block_chain
    assert chain.native == {0, 1, 2}  # stem|stage1|stage2|stage3 join; the head starts with a Reshape
    middle = model.blocks[1]
    assert _ops(middle.optimized) == ["ReorderInput", "Conv", "MaxPool", "ReorderOutput"]
    joined = chain.variants[1, True, True]
    assert _ops(joined.optimized) == ["Conv", "MaxPool"]
    assert [spec.name for spec in joined.inputs] == ["00_stem_out"]
    assert [spec.name for spec in joined.outputs] == ["01_stage1_out"]
    assert _ops(chain.variants[1, True, False].optimized) == ["Conv", "MaxPool", "ReorderOutput"]
    assert _ops(chain.variants[1, False, True].optimized) == ["ReorderInput", "Conv", "MaxPool"]
    assert (4, True, False) not in chain.variants and (0, True, False) not in chain.variants
    # The variants read the weights files the copies read: none of their own.
    copies = set().union(*(_weight_files(block.optimized) for block in model.blocks))
    assert _weight_files(joined.optimized)
    assert all(_weight_files(graph.optimized) <= copies for graph in chain.variants.values())
    # Which graph runs each block: variants inside the chain, plain graphs at its ends and kept blocks.
    assert chain.graphs(0, 5) == [chain.variants[0, False, True], chain.variants[1, True, True],
                                  chain.variants[2, True, True], chain.variants[3, True, False], model.blocks[4]]
    assert chain.graphs(0, 5, keep=[1]) == [chain.variants[0, False, True], chain.variants[1, True, False],
                                            chain.variants[2, False, True], chain.variants[3, True, False],
                                            model.blocks[4]]
    assert chain.graphs(2, 3) == [model.blocks[2]]


def test_every_range_and_kept_block_answers_as_the_plain_blocks_do(tmp_path: Path) -> None:
    model = _load(DIGITS, tmp_path)
    chain, plain = model.block_chain, chains.BlockChain(model.blocks)
    count = len(model.blocks)
    rng = np.random.default_rng(7)
    activations = {"x": rng.standard_normal((3, 1, 32, 32)).astype(np.float32)}
    _, every = plain.run(activations, keep=range(count))
    for index in range(count - 1):
        activations.update(every[index])
    full = model.full.run({"x": activations["x"]})
    assert _same(full, chain.run({"x": activations["x"]})[0])  # digits: exactly the full graph
    for start in range(count):
        feeds = {spec.name: activations[spec.name] for spec in model.blocks[start].inputs}
        for stop in range(start + 1, count + 1):
            for keep in ((), *([index] for index in range(start, stop)), range(start, stop)):
                want, want_kept = plain.run(feeds, start, stop, list(keep))
                got, got_kept = chain.run(feeds, start, stop, list(keep))
                assert _same(want, got), (start, stop, list(keep))
                assert want_kept.keys() == got_kept.keys()
                assert all(_same(want_kept[index], got_kept[index]) for index in want_kept), (start, stop, list(keep))


def test_the_chain_of_every_block_runs_as_one_session_composed_of_the_blocks_graphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = _load(DIGITS, tmp_path)
    chain = model.block_chain
    assert chain.whole is not None
    joined = chain.graphs(0, 5)
    assert _ops(chain.whole.optimized) == [op for graph in joined for op in _ops(graph.optimized)]
    assert _weight_files(chain.whole.optimized) == set().union(*(_weight_files(graph.optimized) for graph in joined))
    ran: list[list[runtime.Graph]] = []
    chained = chains.runtime.chain
    monkeypatch.setattr(chains.runtime, "chain", lambda graphs, *args: ran.append(list(graphs)) or chained(graphs, *args))
    x = {"x": np.random.default_rng(3).standard_normal((12, 1, 32, 32)).astype(np.float32)}  # past bound chains
    assert _same(model.full.run(x), chain.run(x)[0])
    chain.run(x, keep=[2])
    chain.run({"01_stage1_out": chain.run(x, 0, 2)[0]["01_stage1_out"]}, 2)
    assert ran == [[chain.whole], chain.graphs(0, 5, [2]), chain.graphs(0, 2), chain.graphs(2, 5)]
    # Off, the chain keeps its native seams and runs block by block.
    off = _load(DIGITS, tmp_path, composed_chain=False).block_chain
    assert off.whole is None and off.native == {0, 1, 2}
    # Where one session more would pack a copy of the chain's weights past the bound, the chain runs block by block.
    packable = chains.composed.packable_bytes(chain.whole.optimized)
    assert packable > 0
    monkeypatch.setattr(composed, "PACKABLE_MAX", packable - 1)
    with caplog.at_level(logging.INFO, logger="layerserve.server.chains"):
        heavy = _load(DIGITS, tmp_path).block_chain
    assert heavy.whole is None and heavy.native == {0, 1, 2}
    [said] = [record for record in caplog.records if "pack a copy" in record.getMessage()]
    assert said.levelno == logging.INFO and said.fields["packable_mib"] == round(packable / 2**20, 1)
    monkeypatch.setattr(composed, "PACKABLE_MAX", packable)
    assert _load(DIGITS, tmp_path).block_chain.whole is not None


def test_a_composed_graph_that_disagrees_is_refused_and_the_chain_runs_block_by_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    made = chains.composed.compose
    monkeypatch.setattr(chains.composed, "compose", lambda graphs: made(graphs[:-1]))  # the head left out
    with caplog.at_level(logging.WARNING, logger="layerserve.server.chains"):
        model = _load(DIGITS, tmp_path)
    assert model.block_chain.whole is None and model.block_chain.native == {0, 1, 2}
    [warning] = [record for record in caplog.records if "composed graph was refused" in record.getMessage()]
    assert "differs" in warning.fields["reason"] and warning.fields["graph"] == "00_stem.onnx"
    x = np.random.default_rng(1).standard_normal((2, 1, 32, 32)).astype(np.float32)
    assert _same(model.full.run({"x": x}), model.run_chain({"x": x}))


def test_without_optimized_copies_the_chain_runs_the_plain_blocks() -> None:
    model = _load(DIGITS, None)
    assert model.block_chain.native == frozenset() and model.block_chain.variants == {}
    assert model.block_chain.whole is None and model.block_chain.graphs(0, 5) == model.blocks


def test_a_variant_that_disagrees_with_the_plain_chain_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    made = seams.variant

    def drops_the_input_side_only(copy: Path, native_in: bool, native_out: bool, channels=None) -> Path:  # noqa: ANN001
        # A joined block that still converts its output: the next block reads NCHW as if blocked.
        return made(copy, native_in, False, channels) if native_in else made(copy, False, native_out, channels)

    monkeypatch.setattr(chains.seams, "variant", drops_the_input_side_only)
    with caplog.at_level(logging.WARNING, logger="layerserve.server.chains"):
        model = _load(DIGITS, tmp_path)
    assert model.block_chain.native == frozenset() and model.block_chain.variants == {}
    [warning] = [record for record in caplog.records if "probe failed" in record.getMessage()]
    assert "differs" in warning.fields["reason"] and warning.fields["graph"] == "00_stem.onnx"
    x = np.random.default_rng(1).standard_normal((2, 1, 32, 32)).astype(np.float32)
    assert _same(model.full.run({"x": x}), model.run_chain({"x": x}))


def test_the_file_surgery_refuses_a_side_without_a_layout_change(tmp_path: Path) -> None:
    model = _load(DIGITS, tmp_path)
    head = model.blocks[4].optimized
    assert seams.sides(head) == seams.Sides(None, None)
    with pytest.raises(ValueError, match="does not begin with a ReorderInput"):
        seams.variant(head, True, False)


def _odd_channels(tmp_path: Path) -> Path:
    """A CNN whose channel counts are not multiples of the vector width (12, 20, 36) and whose gates
    (Sigmoid) make the padded lanes of a blocked tensor non-zero (sigmoid(0) = 0.5), split by
    ``layerserve split`` into its stages."""
    import torch
    from torch import nn

    from layerserve.cli.main import main

    def stage(cin: int, cout: int, gate: type[nn.Module], pool: nn.Module) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), gate(), pool)

    torch.manual_seed(0)
    net = nn.Sequential(
        stage(3, 12, nn.Sigmoid, nn.MaxPool2d(2)), stage(12, 20, nn.Sigmoid, nn.AvgPool2d(2)),
        stage(20, 36, nn.Sigmoid, nn.Identity()), stage(36, 36, nn.Sigmoid, nn.Identity()),
        stage(36, 36, nn.ReLU, nn.MaxPool2d(2)),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(36, 5)),
    ).eval()
    source = tmp_path / "odd.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(net, (torch.zeros(1, 3, 24, 24),), str(source), dynamo=False,
                          input_names=["image"], output_names=["scores"], dynamic_axes={"image": {0: "n"}})
        assert main(["split", str(source), "--out", str(tmp_path / "odd")]) == 0
    return sorted((tmp_path / "odd").iterdir())[-1]


def test_channels_off_the_vector_width_and_gated_padding_join_exactly(tmp_path: Path) -> None:
    folder = _odd_channels(tmp_path)
    (tmp_path / "optimized").mkdir()
    model = _load(folder, tmp_path / "optimized", name="odd")
    chain, plain = model.block_chain, chains.BlockChain(model.blocks)
    assert chain.native, "no seam of the odd-channel CNN was joined"
    seam = min(chain.native)
    declared = onnx.load(str(chain.variants[seam, seam - 1 in chain.native, True].optimized),
                         load_external_data=False).graph.output[0].type.tensor_type.shape.dim
    padded = declared[1].dim_value  # the blocked tensor's channels, learned at load
    assert padded > 36 and padded % 8 == 0 and declared[0].dim_param and declared[2].dim_value == 6
    x = {"image": np.random.default_rng(2).standard_normal((4, 3, 24, 24)).astype(np.float32)}
    count = len(model.blocks)
    want, want_kept = plain.run(x, keep=range(count))
    for keep in ((), sorted(chain.native)[:1], range(count)):
        got, got_kept = chain.run(x, keep=list(keep))
        assert _same(want, got)
        assert all(_same(want_kept[index], got_kept[index]) for index in keep)


def test_a_probe_input_is_made_only_for_numbers_of_fixed_image_size() -> None:
    def graph(*specs: TensorSpec) -> SimpleNamespace:
        return SimpleNamespace(inputs=list(specs))

    made = chains._probe_input(graph(TensorSpec("image", "FP32", (-1, 3, 24, 24))))
    assert made["image"].shape == (chains.PROBE_BATCH, 3, 24, 24) and made["image"].dtype == np.float32
    assert chains._probe_input(graph(TensorSpec("image", "FP32", (1, 3, 24, 24))))["image"].shape == (1, 3, 24, 24)
    assert "fixed shape" in chains._probe_input(graph(TensorSpec("image", "FP32", (-1, 3, -1, -1))))
    pixels = chains._probe_input(graph(TensorSpec("pixels", "UINT8", (-1, 3, 24, 24))))["pixels"]
    assert pixels.dtype == np.uint8 and pixels.max() > 200 and pixels.min() < 50  # what a picture holds
    assert "not a tensor of numbers" in chains._probe_input(graph(TensorSpec("mask", "BOOL", (-1, 1, 24, 24))))


def test_the_served_chain_uses_native_seams_and_answers_as_the_blocks(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    model = _load(DIGITS, None)
    x = np.random.default_rng(5).standard_normal((4, 1, 32, 32)).astype(np.float32)
    want, want_kept = chains.BlockChain(model.blocks).run({"x": x}, keep=range(5))
    with ServerProcess(REPO / "models", extra_args=["--metrics-port", "-1", "--log-format", "json"],
                       log_path=log) as server, grpc.insecure_channel(server.address) as channel:
        layers = lpb_grpc.LayerServiceStub(channel)
        for keep in ([], [1], [0, 2, 3]):
            request = lpb.ChainRequest(model_name="digits_cnn", start=0, keep=keep)
            tensors.add_raw_input(request.request, "x", x)
            answer = layers.Chain(request)
            got = tensors.outputs_by_name(answer.response)
            assert np.array_equal(got["logits"], want["logits"])
            for kept in answer.kept:
                index = int(kept.block_index)
                assert index in keep
                for name, array in tensors.outputs_by_name(kept.outputs).items():
                    np.testing.assert_array_equal(array, want_kept[index][name])
    text = log.read_text()
    assert '"native_seams": 3, "composed_chain": true' in text and "without native seams" not in text
    assert "block by block" not in text


@pytest.mark.slow
def test_a_model_taking_uint8_pixels_is_probed_with_pixels_and_joins_its_seams(
    foreign_repository: Path, tmp_path: Path
) -> None:
    """The probe feeds an integer input pixel values (it once made only float probes, so such a model's
    chains ran without native seams); the joined chain answers bit for bit as the plain blocks do."""
    model = _load(foreign_repository / "uint8_two_outputs" / "1", tmp_path, "uint8_two_outputs")
    chain = model.block_chain
    assert chain.native and chain.whole is not None  # two outputs, composed all the same
    x = {"image_bytes": tensors.example_values("UINT8", (3, 32, 32, 3), np.random.default_rng(4))}
    plain = chains.BlockChain(model.blocks)
    want, got = plain.run(x), chain.run(x)
    assert list(got[0]) == ["logits", "embedding"] and _same(want[0], got[0])
