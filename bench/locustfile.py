"""Locust users that drive the Open Inference Protocol's ModelInfer over gRPC.

Run through ``python -m bench.load`` (which sets the environment below and can
start a server), or directly::

    LOAD_MODEL=digits_cnn LOAD_TARGETS=full,chain locust -f bench/locustfile.py \
        --headless -u 16 -r 16 -t 30s --host 127.0.0.1:8001

Targets (``LOAD_TARGETS``, comma-separated; each user cycles through them):

- ``full``: ModelInfer on ``<model>``;
- ``block``: ModelInfer on ``<model>.<LOAD_BLOCK>`` (the first block if unset);
- ``chain``: ModelInfer on ``<model>.chain`` (the server-side chain);
- ``client_chain``: ModelInfer on every block in turn, activations passed on by
  the client; reported as one request (needs the layerserve extension to list blocks).

Any Open Inference Protocol server works for ``full`` (and for ``block``/``chain``
when it serves models of those names): inputs are shaped from ModelMetadata, or
from ``LOAD_INPUT=name:DATATYPE:d0,d1,...`` (-1 for the batch) for a server whose
metadata lists none.
"""

from __future__ import annotations

import os
import time

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # gRPC must cooperate with Locust's gevent loop; before any channel

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import User, events, task  # noqa: E402

from layerserve.proto import grpc_service_pb2 as pb  # noqa: E402
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from layerserve.proto import layerserve_pb2, layerserve_pb2_grpc, names, tensors  # noqa: E402

MAX_MESSAGE = 64 * 1024 * 1024
_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


def _declared_input(text: str) -> pb.ModelMetadataResponse.TensorMetadata:
    """``name:DATATYPE:d0,d1,...`` (LOAD_INPUT) as tensor metadata."""
    try:
        name, datatype, dims = text.split(":")
        return pb.ModelMetadataResponse.TensorMetadata(
            name=name, datatype=datatype, shape=[int(d) for d in dims.split(",")]
        )
    except ValueError:
        raise ValueError(f"LOAD_INPUT {text!r} is not name:DATATYPE:d0,d1,... (e.g. x:FP32:-1,1,32,32)") from None


def _random_input(metadata: pb.ModelMetadataResponse, batch: int, seed: int) -> pb.ModelInferRequest:
    """A request for ``metadata``'s model with seeded normal data, -1 dimensions set to ``batch``.

    Inputs come from the metadata, or from LOAD_INPUT when the server declares none;
    ValueError when neither names one.
    """
    rng = np.random.default_rng(seed)
    request = pb.ModelInferRequest(model_name=metadata.name)
    specs = list(metadata.inputs)
    if not specs and os.environ.get("LOAD_INPUT"):
        specs = [_declared_input(os.environ["LOAD_INPUT"])]
    if not specs:
        raise ValueError(f"{metadata.name!r} declares no inputs in ModelMetadata; set LOAD_INPUT (--input)")
    for spec in specs:
        shape = [batch if d < 0 else int(d) for d in spec.shape]
        array = rng.standard_normal(shape).astype(tensors.numpy_dtype(spec.datatype))
        tensors.add_raw_input(request, spec.name, array)
    return request


class InferenceUser(User):
    """One simulated client with its own channel, cycling through the configured targets."""

    host = "127.0.0.1:8001"

    def on_start(self) -> None:
        self.model = os.environ.get("LOAD_MODEL", "digits_cnn")
        self.batch = int(os.environ.get("LOAD_BATCH", "1"))
        self.targets = [t.strip() for t in os.environ.get("LOAD_TARGETS", "full").split(",") if t.strip()]
        self.channel = grpc.insecure_channel(self.host, options=_OPTIONS)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.requests: dict[str, pb.ModelInferRequest] = {}
        self.block_models: list[str] = []
        if "block" in self.targets or "client_chain" in self.targets:
            listing = layerserve_pb2_grpc.LayerServiceStub(self.channel).ListBlocks(
                layerserve_pb2.ListBlocksRequest(model_name=self.model), timeout=10
            )
            self.block_models = list(listing.block_model_names)
            # Each block's input names, so one block's outputs feed the next by position.
            self.block_inputs = [
                [spec.name for spec in self.stub.ModelMetadata(pb.ModelMetadataRequest(name=m), timeout=10).inputs]
                for m in self.block_models
            ]
        block = os.environ.get("LOAD_BLOCK")
        served = {
            "full": self.model,
            "chain": names.chain_name(self.model),
            "block": names.block_name(self.model, block) if block else (self.block_models[0] if self.block_models else ""),
        }
        for target in self.targets:
            if target == "client_chain":
                name = self.block_models[0]
            elif target in served:
                name = served[target]
            else:
                raise ValueError(f"unknown target {target!r}; expected full, block, chain or client_chain")
            metadata = self.stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10)
            self.requests[target] = _random_input(metadata, self.batch, seed=0)
            self.requests[target].model_name = name  # some servers leave the metadata's name empty
        self._next = 0

    def on_stop(self) -> None:
        self.channel.close()

    def _fire(self, name: str, started: float, length: int, error: Exception | None) -> None:
        events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=error,
            context={},
        )

    def _client_chain(self) -> int:
        request = self.requests["client_chain"]
        moved = 0
        for index, model in enumerate(self.block_models):
            request.model_name = model
            response = self.stub.ModelInfer(request, timeout=30)
            moved += response.ByteSize()
            if index + 1 < len(self.block_models):
                # The block's output becomes the next block's input, bytes untouched.
                next_request = pb.ModelInferRequest()
                for out, name in zip(response.outputs, self.block_inputs[index + 1], strict=True):
                    next_request.inputs.add(name=name, datatype=out.datatype, shape=out.shape)
                next_request.raw_input_contents.extend(response.raw_output_contents)
                request = next_request
        return moved

    @task
    def infer(self) -> None:
        target = self.targets[self._next % len(self.targets)]
        self._next += 1
        started = time.perf_counter()
        try:
            if target == "client_chain":
                length = self._client_chain()
            else:
                length = self.stub.ModelInfer(self.requests[target], timeout=30).ByteSize()
        except grpc.RpcError as error:
            self._fire(target, started, 0, error)
        else:
            self._fire(target, started, length, None)
