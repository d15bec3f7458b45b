"""``layerserve split`` on the graphs users bring: both exporters, old IR, fixed batches, external data,
contrib ops. Each split needs no flag, names blocks after the modules, tells the truth about the batch,
and its chain of block files reproduces the original file on ONNX Runtime within 1e-4 relative (a few FP16
roundings for an FP16 graph)."""

from __future__ import annotations

from pathlib import Path

import cnn_zoo
import foreign_graphs
import numpy as np
import onnx
import pytest

from layerserve.export.runtime import cpu_session
from layerserve.proto.manifest import read_manifest

ZOO_MODELS = [f"{arch}_{how}" for arch in cnn_zoo.ZOO for how in foreign_graphs.EXPORTS]
ALL_MODELS = [*ZOO_MODELS, *foreign_graphs.OTHER_GRAPHS]
# Module names the automatic depth must give a block (one per architecture; the dynamo exporter may fold a
# conv into the BatchNorm after it, so the first module of a stem can be the BatchNorm's name).
EXPECTED_BLOCKS = {
    "resnet": {"layer1", "layer2", "layer3", "layer4", "fc"},
    "mobilenet_v3": {"features_1", "features_4", "features_7", "classifier"},
    "densenet": {"features_denseblock1", "features_transition1", "features_denseblock4", "classifier"},
    "inception": {"Mixed_5b", "Mixed_5c", "Mixed_6a", "Mixed_6b", "fc"},
    "shufflenet": {"stage2", "stage3", "stage4", "conv5", "fc"},
    "efficientnet": {"features_1", "features_3", "features_5", "classifier"},
    "regnet": {"stem", "trunk_output_block1", "trunk_output_block4", "fc"},
}


def _input(path: Path, rows: int, seed: int = 1) -> tuple[str, np.ndarray]:
    return foreign_graphs.example_input(path, rows, seed)


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))


@pytest.mark.slow
@pytest.mark.parametrize("model", ALL_MODELS)
def test_split_chain_reproduces_the_original_file(foreign_files: dict[str, Path], foreign_repository: Path,
                                                  model: str) -> None:
    folder = foreign_repository / model / "1"
    manifest = read_manifest(folder)
    original = onnx.load(str(foreign_files[model]))
    declared = original.graph.input[0].type.tensor_type.shape.dim[0]
    fixed = manifest.inputs[0].shape[0] != -1
    # The truth about the batch: -1 only where any batch runs; a fixed graph says its size everywhere.
    for block in manifest.blocks:
        assert all((spec.shape[0] != -1) == fixed for spec in [*block.inputs, *block.outputs]), block.name
    assert manifest.serving.dynamic_batching is not fixed
    rows = 1 if fixed else 3
    path = foreign_files[model]
    name, x = _input(path, 1 if declared.HasField("dim_value") else rows)
    want = cpu_session(str(path)).run(None, {name: x})
    if rows != len(x):  # a graph fixed at one row that split made dynamic: its rows, one at a time
        xs = [_input(path, 1, seed)[1] for seed in range(rows)]
        x = np.concatenate(xs)
        want = [np.concatenate(parts) for parts in zip(*(cpu_session(str(path)).run(None, {name: one}) for one in xs),
                                                        strict=True)]
    values = {name: x}
    tolerance = foreign_graphs.chain_tolerance([block.inputs[0].datatype for block in manifest.blocks])
    for block in manifest.blocks:
        session = cpu_session(str(folder / block.file.path))
        values.update(zip([o.name for o in session.get_outputs()],
                          session.run(None, {i.name: values[i.name] for i in session.get_inputs()}), strict=True))
    # Every output of the model, in its order, from the last block.
    assert [spec.name for spec in manifest.blocks[-1].outputs] == [o.name for o in original.graph.output]
    for spec, expected in zip(manifest.outputs, want, strict=True):
        assert values[spec.name].shape == expected.shape
        assert _relative(values[spec.name], expected) <= tolerance, spec.name
    assert manifest.provenance.chain_max_rel_diff <= tolerance
    if model in ZOO_MODELS:
        arch = model.rsplit("_", 1)[0]
        names = {block.name.split("_", 1)[1] for block in manifest.blocks}
        assert EXPECTED_BLOCKS[arch] <= names, sorted(names)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["torchscript", "default"])
def test_fixed_batch_exports_are_made_dynamic_and_say_so(foreign_repository: Path, how: str) -> None:
    """Both exporters' fixed batch: TorchScript's Reshapes to [1, -1], and the dynamo one-liner's to [1, 256] with
    allowzero=1 (once left 'batch fixed at 1': every request one row, nothing merged)."""
    for arch in cnn_zoo.ZOO:
        manifest = read_manifest(foreign_repository / f"{arch}_{how}" / "1")
        assert manifest.inputs[0].shape == [-1, *cnn_zoo.IMAGE_SHAPE], arch
        assert any(note.startswith("batch made dynamic (fixed at 1 in the graph") for note in manifest.provenance.notes)
    # The channel shuffle's five-dimensional Reshapes carried the batch: rewritten, and proven row by row.
    notes = read_manifest(foreign_repository / f"shufflenet_{how}" / "1").provenance.notes
    assert any("Reshape target shapes rewritten" in note for note in notes), notes


@pytest.mark.slow
def test_a_batch_that_cannot_be_freed_stays_fixed(foreign_repository: Path) -> None:
    manifest = read_manifest(foreign_repository / "coordconv_fixed" / "1")
    assert manifest.inputs[0].shape == [1, 3, 64, 64]
    assert manifest.serving.max_batch_size == 0 and not manifest.serving.dynamic_batching
    # Why, too: ONNX Runtime's own words at the other size (the coordinate planes are one row).
    assert any(note.startswith("batch fixed at 1") and "not made dynamic: it does not run at another batch size ("
               in note for note in manifest.provenance.notes), manifest.provenance.notes


@pytest.mark.slow
def test_model_zoo_ir3_is_brought_up_to_date(foreign_files: dict[str, Path], foreign_repository: Path) -> None:
    original = onnx.load(str(foreign_files["zoo_ir3"]))
    assert original.ir_version == 3
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(original)
    manifest = read_manifest(foreign_repository / "zoo_ir3" / "1")
    assert "IR version 3 raised to 4" in manifest.provenance.notes
    assert manifest.inputs[0].name == "gpu_0/data_0" and manifest.outputs[0].name == "gpu_0/softmax_1"
    assert onnx.load(str(foreign_repository / "zoo_ir3" / "1" / "model.onnx")).ir_version >= 4


@pytest.mark.slow
def test_untyped_contrib_op_outputs_are_typed_by_onnx_runtime(foreign_repository: Path) -> None:
    folder = foreign_repository / "contrib_op" / "1"
    manifest = read_manifest(folder)
    # The Gelu output (which ONNX's shape inference cannot type) is a block boundary with a full shape.
    boundaries = {
        onnx.load(str(folder / block.file.path)).graph.input[0].doc_string: list(block.inputs[0].shape)
        for block in manifest.blocks[1:]
    }
    assert boundaries["tensor 'g1' of the full model"] == [-1, 8, 16, 16]


def test_split_of_an_onnx_file_does_not_import_torch(foreign_files: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import contextlib, io, sys\n"
        "from layerserve.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = main(['split', {str(foreign_files['zoo_ir3'])!r}, '--out', {str(tmp_path / 'm')!r}])\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert shown.stdout.split() == ["0", "False"], shown.stderr


@pytest.mark.slow
def test_integer_pixels_and_a_second_output_are_kept(foreign_repository: Path) -> None:
    """An end-to-end export: the UINT8 input stays UINT8 (its first block casts and normalises), both
    outputs are served in the graph's order, and every block after the first takes FP32."""
    manifest = read_manifest(foreign_repository / "uint8_two_outputs" / "1")
    assert (manifest.inputs[0].datatype, list(manifest.inputs[0].shape)) == ("UINT8", [-1, 32, 32, 3])
    assert [(o.name, list(o.shape)) for o in manifest.outputs] == [("logits", [-1, 10]), ("embedding", [-1, 32])]
    assert manifest.blocks[0].inputs[0].datatype == "UINT8"
    assert {block.inputs[0].datatype for block in manifest.blocks[1:]} == {"FP32"}


@pytest.mark.slow
def test_a_quantized_model_hands_int8_activations_between_blocks(foreign_repository: Path) -> None:
    manifest = read_manifest(foreign_repository / "qoperator_int8" / "1")
    between = [block.inputs[0].datatype for block in manifest.blocks[1:]]
    assert between and set(between) == {"INT8"}, between
    assert manifest.inputs[0].datatype == manifest.outputs[0].datatype == "FP32"
    # QDQ: every cut is the quantized tensor between a QuantizeLinear and its DequantizeLinear (export/cuts.py).
    qdq = read_manifest(foreign_repository / "qdq_int8" / "1")
    between = [block.inputs[0].datatype for block in qdq.blocks[1:]]
    assert len(qdq.blocks) >= 3 and set(between) == {"UINT8"}, between


@pytest.mark.slow
def test_a_dynamically_quantized_model_splits_at_the_layers_of_its_float_source(foreign_repository: Path) -> None:
    """ConvInteger and MatMulInteger are layers like Conv and MatMul: the stages of ``features`` are opened
    as in the float export (the float names alone gave 3 blocks), and their weights and FLOPs are counted."""
    quantized = read_manifest(foreign_repository / "dynamic_int8" / "1")
    source = read_manifest(foreign_repository / "mobilenet_v3_torchscript" / "1")
    assert [b.name for b in quantized.blocks] == [b.name for b in source.blocks]
    for ours, theirs in zip(quantized.blocks, source.blocks, strict=True):
        assert (ours.flops > 0) == (theirs.flops > 0), ours.name
        assert ours.parameters >= theirs.parameters, ours.name  # INT8 weights, their scales and zero points


@pytest.mark.slow
def test_a_channels_last_keras_export_splits_at_its_layers(foreign_repository: Path) -> None:
    manifest = read_manifest(foreign_repository / "keras_nhwc" / "1")
    assert (manifest.inputs[0].name, list(manifest.inputs[0].shape)) == ("input_1", [-1, 32, 32, 3])
    assert len(manifest.blocks) >= 3
    assert manifest.outputs[0].name == "dense"


def test_integer_pixels_in_channels_first_record_no_normalisation() -> None:
    """The graph normalises its UINT8 pixels itself: ImageNet's mean and std would mislead a reader of the
    manifest (the client sends integer pixels as they are, whatever it says)."""
    from onnx import TensorProto, helper

    from layerserve.export.imported import default_preprocessing

    def graph(elem: int) -> onnx.ModelProto:
        return helper.make_model(helper.make_graph(
            [helper.make_node("Cast", ["pixels"], ["out"], to=TensorProto.FLOAT)], "g",
            [helper.make_tensor_value_info("pixels", elem, ["N", 3, 32, 32])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 32, 32])]))

    pixels = default_preprocessing(graph(TensorProto.UINT8))
    assert list(pixels.mean) == [0.0, 0.0, 0.0] and list(pixels.std) == [1.0, 1.0, 1.0]
    assert pixels.crop_height == 32 and pixels.color == "RGB"
    assert list(default_preprocessing(graph(TensorProto.FLOAT)).mean) == pytest.approx([0.485, 0.456, 0.406])


def test_a_boolean_input_is_refused_in_one_line(tmp_path: Path) -> None:
    """(INT64 ids: test_export_user_model.py.)"""
    elem = "BOOL"
    import subprocess
    import sys

    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Cast", ["mask"], ["out"], to=TensorProto.FLOAT)], "mask",
                              [helper.make_tensor_value_info("mask", getattr(TensorProto, elem), ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1, 8, 8])])
    path = tmp_path / "mask.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    shown = subprocess.run([sys.executable, "-m", "layerserve.cli.main", "split", str(path), "--out", str(tmp_path / "m")],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 2
    assert shown.stderr.strip().splitlines() == [
        f"layerserve split: input 'mask' is {elem}; layerserve splits models whose one input is an image: "
        "floating point, or UINT8, INT8, UINT16 pixels"]


@pytest.mark.slow
def test_an_fp16_graph_is_checked_at_fp16_precision_and_says_so(foreign_repository: Path) -> None:
    manifest = read_manifest(foreign_repository / "fp16_resnet" / "1")
    assert manifest.inputs[0].datatype == manifest.outputs[0].datatype == "FP16"
    assert {block.inputs[0].datatype for block in manifest.blocks} == {"FP16"}
    assert "chain checked at 0.0078 of the output's scale: narrower than FP32 tensors cross the cuts" in (
        manifest.provenance.notes)
    # FP32 graphs keep the 1e-4 check and say nothing of it.
    assert not any(note.startswith("chain checked") for note in read_manifest(
        foreign_repository / "resnet_torchscript" / "1").provenance.notes)


@pytest.mark.slow
def test_a_segmentation_head_reading_the_input_size_splits_at_its_layers(foreign_repository: Path) -> None:
    """FCN's resize reads Shape(image): with the height and width folded, the backbone and classifier
    are blocks of their own (once the graph had no single-tensor cut at all)."""
    manifest = read_manifest(foreign_repository / "segmentation_fcn" / "1")
    assert "2 reads of fixed dimensions (Shape then Gather or Slice) folded to constants" in manifest.provenance.notes
    assert [block.name for block in manifest.blocks] == ["00_backbone", "01_classifier"]
    assert list(manifest.outputs[0].shape) == [-1, 5, 64, 64]
    assert "batch dynamic" in manifest.provenance.notes


@pytest.mark.slow
def test_a_flatten_by_the_inputs_batch_is_sized_and_split_by_layer(foreign_repository: Path) -> None:
    """ONNX's inference leaves the flattened width symbolic (unk__0); the split once ended in a traceback
    ('cannot size it per sample'). ONNX Runtime's probe runs give it, as for any tensor ONNX cannot type."""
    manifest = read_manifest(foreign_repository / "flatten_by_input_batch" / "1")
    widths = [list(block.outputs[0].shape) for block in manifest.blocks]
    assert [-1, 512] in widths and widths[-1] == [-1, 10]
    assert manifest.blocks[-1].inputs[0].shape == [-1, 512]
    # The batch is read from the input at the flatten: moved to the flattened tensor, so each layer is a block
    # (once the convolutions were one block, since every cut crossed the read).
    assert "1 read of the batch moved next to the tensor it shapes" in manifest.provenance.notes
    assert [block.name for block in manifest.blocks] == [
        "00_features_0", "01_features_1", "02_features_2", "03_features_3", "04_fc"]
