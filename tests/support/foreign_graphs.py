"""ONNX files the way users bring them, built in the test suite (no downloads, no torchvision).

* the CNN zoo (``cnn_zoo``) exported the ways users export:
  ``torch.onnx.export(model, x, path, dynamo=False)`` (the TorchScript-based exporter:
  a fixed batch of 1, tensors named ``/layer1/layer1.0/relu/Relu_output_0``), the
  dynamo exporter with a dynamic batch, and the plain one-liner, which is the dynamo
  exporter with a fixed batch (Reshapes to ``[1, 256]`` with ``allowzero=1``);
* a Model-Zoo-era graph: IR version 3, initializers not listed as inputs, tensors
  named ``gpu_0/data_0`` ... ``gpu_0/softmax_1``;
* a CoordConv-style graph whose batch cannot be made dynamic (a constant [1, ...]
  tensor concatenated to the input's channels): it must be served fixed;
* weights in external data files;
* a graph using an ONNX Runtime contrib op (``com.microsoft.Gelu``) that ONNX's own
  shape inference cannot type;
* a Keras model as tf2onnx writes it: channels-last input ``input_1`` [unk__12, H, W, 3],
  a Transpose into the convolutions, MatMul + Add for the dense layer, names such as
  ``StatefulPartitionedCall/model/conv2d/BiasAdd:0``;
* an end-to-end export: UINT8 pixels [N, H, W, 3] in, the normalisation inside the
  graph, and two outputs (logits, then the embedding);
* a model quantized by ONNX Runtime's static quantization, in the QOperator format
  (INT8 activations from block to block) and in the QDQ format (UINT8 activations, and
  ``qdq_int8_activations`` with INT8 ones, tried on its own); the zoo's MobileNet-v3 quantized
  dynamically (``quantize_dynamic``, as ``optimum-cli onnxruntime quantize`` does: ConvInteger and
  MatMulInteger, weights' bias Reshapes gathered at the top of the graph);
* the zoo's ResNet converted to FP16 (weights, constants, input and output), as
  ``onnxconverter_common.float16.convert_float_to_float16`` leaves a graph for GPU serving;
* a segmentation head in torchvision's FCN style, scores resized back to the input's size
  (``F.interpolate(x, size=image.shape[-2:])``): the last operator reads the input's shape;
* a flatten by the input's batch (``features(images).view(images.size(0), -1)``), whose
  width ONNX's shape inference leaves symbolic (``unk__0``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import cnn_zoo
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# torchscript: dynamo=False, fixed batch; dynamo: a dynamic batch (dynamic_shapes); default: the one-liner
# torch.onnx.export(model, (x,), path), since torch 2.9 the dynamo exporter with a fixed batch.
EXPORTS = ("torchscript", "dynamo", "default")


def export_zoo_model(name: str, how: str, path: Path) -> Path:
    """Export ``cnn_zoo`` architecture ``name`` to ``path`` the way ``how`` says (EXPORTS)."""
    import torch

    model = cnn_zoo.build(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        if how == "torchscript":
            torch.onnx.export(model, torch.randn(1, *cnn_zoo.IMAGE_SHAPE), str(path), dynamo=False)
        elif how == "default":
            torch.onnx.export(model, (torch.randn(1, *cnn_zoo.IMAGE_SHAPE),), str(path))
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.onnx.export(model, (torch.randn(2, *cnn_zoo.IMAGE_SHAPE),), dynamo=True,
                                        dynamic_shapes={"x": {0: batch}})
            program.save(str(path))
    return path


def _small_torchscript_cnn(path: Path, opset: int = 11) -> onnx.ModelProto:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(1, 3, 32, 32), buffer, dynamo=False, opset_version=opset)
    return onnx.load_from_string(buffer.getvalue())


def model_zoo_ir3(path: Path) -> Path:
    """IR version 3 with initializers that are not graph inputs (the checker refuses it, ONNX Runtime runs it),
    a symbolic batch, and Caffe2-era tensor names with '/': ``gpu_0/data_0`` in, ``gpu_0/softmax_1`` out."""
    proto = _small_torchscript_cnn(path, opset=9)
    initializers = {t.name for t in proto.graph.initializer}
    special = {proto.graph.input[0].name: "gpu_0/data_0", proto.graph.output[0].name: "gpu_0/softmax_1"}

    def renamed(name: str) -> str:
        return name if not name or name in initializers else special.get(name, f"gpu_0/{name.strip('/')}")

    for node in proto.graph.node:
        for field in (node.input, node.output):
            field[:] = [renamed(name) for name in field]
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.name = renamed(value.name)
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    del proto.graph.value_info[:]
    proto.ir_version = 3
    onnx.save(proto, str(path))
    return path


def coordconv_fixed(path: Path) -> Path:
    """A CoordConv-style CNN exported with the plain one-liner: the coordinate planes are a constant
    [1, 2, H, W] tensor concatenated to the input, so the graph only ever takes one row."""
    import torch
    from torch import nn

    class CoordConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
            self.register_buffer("coords", torch.stack([ys, xs])[None])
            self.conv = nn.Conv2d(5, 8, 3, stride=2, padding=1)
            self.head = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv(torch.cat([x, self.coords], 1)))
            return self.head(x.mean([2, 3]))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(CoordConv().eval(), torch.randn(1, 3, 64, 64), str(path), dynamo=False)
    return path


def external_data(path: Path) -> Path:
    """The small CNN with every weight in a separate data file beside the model."""
    proto = _small_torchscript_cnn(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    return path


def contrib_op(path: Path) -> Path:
    """Conv -> com.microsoft.Gelu -> Conv -> pool -> Gemm: ONNX cannot type what Gelu outputs."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
        numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32) * 0.2, "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Gelu", ["c1"], ["g1"], domain="com.microsoft", name="gelu"),
        helper.make_node("Conv", ["g1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3"], ["scores"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "contrib",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def keras_nhwc(path: Path) -> Path:
    """A small Keras CNN the way tf2onnx exports it (channels last, TensorFlow's op and tensor names)."""
    rng = np.random.default_rng(0)
    prefix = "StatefulPartitionedCall/model/"

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2,
                                       f"{prefix}{name}/ReadVariableOp:0")

    weights = [weight("conv2d/Conv2D", 8, 3, 3, 3), weight("conv2d/BiasAdd", 8), weight("conv2d_1/Conv2D", 16, 8, 3, 3),
               weight("conv2d_1/BiasAdd", 16), weight("dense/MatMul", 16, 10), weight("dense/BiasAdd", 10),
               numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "const_axes__12")]
    w = [t.name for t in weights]

    def node(op: str, inputs: list[str], name: str, **attributes: object) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [name if name == "dense" else f"{prefix}{name}:0"], name=prefix + name,
                                **attributes)

    t = lambda name: f"{prefix}{name}:0"  # noqa: E731 - the tensor a node above wrote
    nodes = [
        node("Transpose", ["input_1"], "conv2d/BiasAdd__6", perm=[0, 3, 1, 2]),
        node("Conv", [t("conv2d/BiasAdd__6"), w[0], w[1]], "conv2d/BiasAdd", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        node("Relu", [t("conv2d/BiasAdd")], "conv2d/Relu"),
        node("MaxPool", [t("conv2d/Relu")], "max_pooling2d/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        node("Conv", [t("max_pooling2d/MaxPool"), w[2], w[3]], "conv2d_1/BiasAdd", pads=[1, 1, 1, 1],
             kernel_shape=[3, 3]),
        node("Relu", [t("conv2d_1/BiasAdd")], "conv2d_1/Relu"),
        node("Transpose", [t("conv2d_1/Relu")], "conv2d_1/Relu__20", perm=[0, 2, 3, 1]),
        node("ReduceMean", [t("conv2d_1/Relu__20"), w[6]], "global_average_pooling2d/Mean", keepdims=0),
        node("MatMul", [t("global_average_pooling2d/Mean"), w[4]], "dense/MatMul"),
        node("Add", [t("dense/MatMul"), w[5]], "dense/BiasAdd"),
        node("Softmax", [t("dense/BiasAdd")], "dense", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tf2onnx",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__12", 32, 32, 3])],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__13", 10])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tf2onnx",
                              producer_version="1.16.1")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def int8_softmax_output(path: Path) -> Path:
    """The Keras CNN above answering as a full-integer TFLite model through ``tf2onnx --tflite`` does: its
    softmax quantized to INT8 with TFLite's output quantization (scale 1/256, zero point -128)."""
    model = onnx.load(str(keras_nhwc(path)))
    graph = model.graph
    softmax = next(node for node in graph.node if node.op_type == "Softmax")
    softmax.output[0] = "dense_float"
    graph.initializer.extend([numpy_helper.from_array(np.array(1 / 256, np.float32), "output_scale"),
                              numpy_helper.from_array(np.array(-128, np.int8), "output_zero_point")])
    graph.node.append(helper.make_node("QuantizeLinear", ["dense_float", "output_scale", "output_zero_point"],
                                       ["StatefulPartitionedCall:0"], name="output_quantize"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("StatefulPartitionedCall:0", TensorProto.INT8, ["unk__13", 10]))
    onnx.save(model, str(path))
    return path


def uint8_two_outputs(path: Path) -> Path:
    """UINT8 pixels [N, 32, 32, 3] in, ImageNet normalisation inside, (logits, embedding) out: an
    end-to-end export, made with the TorchScript exporter and a dynamic batch."""
    import torch
    from torch import nn

    class EndToEnd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = (pixels.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
            embedding = self.pool(self.features(x)).flatten(1)
            return self.fc(embedding), embedding

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(EndToEnd().eval(), torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8), str(path),
                          dynamo=False, input_names=["image_bytes"], output_names=["logits", "embedding"],
                          dynamic_axes={name: {0: "batch"} for name in ("image_bytes", "logits", "embedding")})
    return path


def qoperator_int8(path: Path) -> Path:
    """The small CNN quantized by ``onnxruntime.quantization.quantize_static`` in the QOperator format
    (QLinearConv, INT8 activations between the operators), calibrated on eight random images."""
    return _quantized(path, "QOperator")


def qdq_int8(path: Path) -> Path:
    """The same in the QDQ format: QuantizeLinear/DequantizeLinear pairs around float operators, UINT8
    activations and INT8 weights (ONNX Runtime's advice for x86)."""
    return _quantized(path, "QDQ", activations="QUInt8")


def qdq_int8_activations(path: Path) -> Path:
    """The QDQ format with INT8 activations (quantize_static's default): on a CPU without VNNI, ONNX Runtime
    fuses these only where each QuantizeLinear/DequantizeLinear pair lies in one graph."""
    return _quantized(path, "QDQ")


def _quantized(path: Path, quant_format: str, activations: str | None = None) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    proto = _small_torchscript_cnn(path, opset=13)
    source = path.with_name(path.stem + "_float.onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(source))
    name = proto.graph.input[0].name

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{name: rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # the quantizer's advice ("consider pre-processing") is noise here
    try:
        chosen = {"activation_type": QuantType[activations]} if activations else {}
        quantize_static(str(source), str(path), Images(), quant_format=QuantFormat[quant_format], **chosen)
    finally:
        root.setLevel(level)
        source.unlink()
    return path


def dynamic_int8(path: Path) -> Path:
    """The zoo's MobileNet-v3 (TorchScript export) quantized by ``onnxruntime.quantization.quantize_dynamic``:
    INT8 weights, activations quantized at run time (DynamicQuantizeLinear, ConvInteger, MatMulInteger)."""
    source = export_zoo_model("mobilenet_v3", "torchscript", path.with_name(path.stem + "_float.onnx"))
    quantized_dynamically(source, path)
    source.unlink()
    return path


def quantized_dynamically(source: Path, path: Path) -> Path:
    """``source`` through ``onnxruntime.quantization.quantize_dynamic`` into ``path``, its advice kept quiet."""
    from onnxruntime.quantization import quantize_dynamic

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR
    try:
        quantize_dynamic(str(source), str(path))
    finally:
        root.setLevel(level)
    return path


def fp16_resnet(path: Path) -> Path:
    """The zoo's ResNet (TorchScript export) with every FP32 initializer, constant, input and output in FP16."""
    source = export_zoo_model("resnet", "torchscript", path.with_name(path.stem + "_fp32.onnx"))
    proto = onnx.load(str(source))
    source.unlink()
    graph = proto.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float16)))
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    onnx.save(proto, str(path))
    return path


def segmentation_fcn(path: Path) -> Path:
    """Backbone, 1x1 classifier, bilinear resize to the input's own height and width (TorchScript, dynamic batch)."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own spelling
    from torch import nn

    class FCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
            self.classifier = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 5, 1))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            scores = self.classifier(self.backbone(image))
            return F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=False)

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(FCN().eval(), torch.randn(1, 3, 64, 64), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["out"],
                          dynamic_axes={"image": {0: "batch"}, "out": {0: "batch"}})
    return path


def flatten_by_input_batch(path: Path) -> Path:
    """Two strided convolutions, ``.view(images.size(0), -1)``, a linear layer (TorchScript, dynamic batch)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
            self.fc = nn.Linear(8 * 8 * 8, 10)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(images).view(images.size(0), -1))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), torch.randn(1, 3, 32, 32), str(path), dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}})
    return path


def one_picture_hwc(path: Path) -> Path:
    """A ``forward(picture)`` taking one ``[32, 32, 3]`` picture and adding its own batch
    (``picture.permute(2, 0, 1).unsqueeze(0)``), answering ``[1, 10]`` (TorchScript): no batch dimension."""
    import torch

    net = _small_cnn(3, lambda picture: picture.permute(2, 0, 1).unsqueeze(0))
    return _exported(net, torch.rand(32, 32, 3), path, "picture", dynamic=False)


def one_picture_chw_squeezed(path: Path) -> Path:
    """A ``forward(image)`` taking one ``[3, 40, 48]`` picture, adding its batch (``image[None]``) and
    squeezing it away again, so it answers ``[10]``; the ``torch.onnx.export(model, (x,), path)`` one-liner
    (the dynamo exporter)."""
    import torch

    net = _small_cnn(3, lambda image: image[None], squeeze=True)
    return _exported(net, torch.rand(3, 40, 48), path, "image", dynamic=False, how="default")


def batch_of_one_squeezed(path: Path) -> Path:
    """A CNN that squeezes its batch of 1 out of the answer (``logits.squeeze(0)``: ``[10]``), exported with the
    one-liner at ``[1, 3, 16, 16]``: a fixed batch it cannot be freed of, since its answer loses the axis."""
    import torch

    net = _small_cnn(3, lambda images: images, squeeze=True)
    return _exported(net, torch.rand(1, 3, 16, 16), path, "images", dynamic=False, how="default")


def grey_without_channel_axis(path: Path) -> Path:
    """An MNIST-style CNN taking grey pictures ``[N, 28, 28]`` and adding their channel axis itself
    (``x.unsqueeze(1)``; TorchScript, dynamic batch)."""
    import torch

    return _exported(_small_cnn(1, lambda x: x.unsqueeze(1)), torch.rand(1, 28, 28), path, "x", dynamic=True)


def _small_cnn(channels: int, to_nchw: object, squeeze: bool = False) -> object:
    """Two convolutions and a linear layer over ``to_nchw(input)``, seeded; its batch of 1 squeezed out of the
    answer when ``squeeze``."""
    import torch
    from torch import nn

    class SmallCnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scores = self.fc(self.features(to_nchw(x)).flatten(1))
            return scores.squeeze(0) if squeeze else scores

    return SmallCnn()


def signal_conv1d(path: Path) -> Path:
    """A 1-D CNN over 12-channel signals ``[N, 12, 100]`` (an ECG's leads; TorchScript, dynamic batch): its
    input reads like a grey picture ``[N, H, W]``, and is none."""
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv1d(12, 16, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(16, 16, 5, padding=2),
                        nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 4))
    return _exported(net, torch.rand(1, 12, 100), path, "signal", dynamic=True)


def _exported(net: object, example: object, path: Path, input_name: str, dynamic: bool,
              how: str = "torchscript") -> Path:
    """``net`` with seeded weights, exported as ``how`` says: ``torchscript`` (``dynamo=False``, the batch
    dynamic where ``dynamic``) or ``default``, the plain one-liner ``torch.onnx.export(model, (x,), path)``."""
    import torch

    torch.manual_seed(0)
    for parameter in net.parameters():  # seeded weights, whatever the order of construction
        torch.nn.init.normal_(parameter, std=0.3)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        if how == "default":
            torch.onnx.export(net.eval(), (example,), str(path))
        else:
            axes = {input_name: {0: "n"}, "logits": {0: "n"}} if dynamic else None
            torch.onnx.export(net.eval(), example, str(path), dynamo=False, input_names=[input_name],
                              output_names=["logits"], dynamic_axes=axes)
    return path


OTHER_GRAPHS = {
    "zoo_ir3": model_zoo_ir3,
    "coordconv_fixed": coordconv_fixed,
    "external_data": external_data,
    "contrib_op": contrib_op,
    "keras_nhwc": keras_nhwc,
    "uint8_two_outputs": uint8_two_outputs,
    "qoperator_int8": qoperator_int8,
    "qdq_int8": qdq_int8,
    "dynamic_int8": dynamic_int8,
    "fp16_resnet": fp16_resnet,
    "segmentation_fcn": segmentation_fcn,
    "flatten_by_input_batch": flatten_by_input_batch,
}


def chain_tolerance(datatypes: list[str]) -> float:
    """How far (relative to the output's scale) a chain may stray from its full graph when ``datatypes``
    cross its cuts: float32 rounding, or a few FP16 roundings (export/parity.py, ``tolerance_for``)."""
    return 8 * 2.0**-10 if "FP16" in datatypes else 1e-4


def example_input(path: Path, rows: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """The graph input's name and ``rows`` rows it takes: what ``layerserve split`` probes it with (standard
    normal for a floating-point input, pixel values for an integer one; free dimensions past the batch 1)."""
    from layerserve.export.foreign import probe_input

    return probe_input(onnx.load(str(path), load_external_data=False), rows, seed)
