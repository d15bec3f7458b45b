"""The transport's floor: a bare grpc.aio server that only decodes, runs ONNX Runtime and encodes.

What any Python gRPC server spends on a request, whatever else it does: no validation, batching,
metrics, statistics, drain, limits or error mapping. It starts one process per usable core (what
``layerserve serve --workers auto`` starts), all on one port through SO_REUSEPORT, each running the
full graph on its event loop with layerserve's session options (server/runtime.py). Measured beside
layerserve in the same rounds (``python -m bench.grid --floor``), it shows how much of a request's CPU
is layerserve's and how much Python gRPC's, on the machine at hand.

It runs on the event loop layerserve's default picks (uvloop where installed: server/loops.py) and
raises glibc's malloc thresholds as layerserve's workers do (server/allocator.py), so large
tensors cost neither server page faults per request. It answers ServerReady (true once every
process serves) and ModelInfer with raw tensors; anything else is UNIMPLEMENTED. Not a server for
users: a malformed request is an INTERNAL error here.

With ``--cached`` it is the transport alone: a request it has answered before (the same bytes, as a
load generator repeats them) gets the cached response without a run, so what it serves is what the
client and gRPC allow with no compute at all (``bench.grid.transport_ceilings``). The lookup hashes and
compares the request's bytes, about 0.5 ms per MB here: 8 us for a digits batch of 64.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import grpc
import numpy as np

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import tensors
from layerserve.server import allocator, loops, runtime
from layerserve.server.launcher import ServerProcess
from layerserve.server.settings import usable_cores

SERVICE = "inference.GRPCInferenceService"
_CACHED_MAX = 16
_OPTIONS = [("grpc.so_reuseport", 1), ("grpc.max_send_message_length", 256 << 20),
            ("grpc.max_receive_message_length", 256 << 20)]


def _handlers(graph: runtime.Graph, all_ready: Event, cached: bool) -> grpc.GenericRpcHandler:
    answers: dict[bytes, bytes] = {}  # cached mode: request bytes -> response bytes (a bench sends a few)

    async def model_infer(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if cached and (answer := answers.get(data)) is not None:
            return answer
        request = pb.ModelInferRequest.FromString(data)
        feeds = {
            tensor.name: np.frombuffer(raw, tensors.numpy_dtype(tensor.datatype)).reshape(tuple(tensor.shape))
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                         id=request.id)
        tensors.encode_outputs(response, graph.run(feeds))
        answer = response.SerializeToString()
        if cached and len(answers) < _CACHED_MAX:
            answers[data] = answer
        return answer

    async def server_ready(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=all_ready.is_set()).SerializeToString()

    def raw(method) -> grpc.RpcMethodHandler:  # bytes in, bytes out: no (de)serializer of grpc's own
        return grpc.unary_unary_rpc_method_handler(method)

    return grpc.method_handlers_generic_handler(
        SERVICE, {"ModelInfer": raw(model_infer), "ServerReady": raw(server_ready)})


async def _serve(model_file: Path, host: str, port: int, ready: Event, all_ready: Event, cached: bool) -> None:
    graph = runtime.Graph(model_file, runtime.RuntimeOptions())
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers([_handlers(graph, all_ready, cached)])
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _process(model_file: Path, host: str, port: int, ready: Event, all_ready: Event, loop: loops.LoopChoice,
             cached: bool) -> None:
    allocator.retain_freed_memory()
    loops.run(_serve(model_file, host, port, ready, all_ready, cached), loop)


def serve(model_file: Path, host: str, port: int, processes: int, loop: loops.LoopChoice = "auto",
          cached: bool = False) -> None:
    """Run ``processes`` servers on ``host:port`` until SIGTERM or SIGINT, then stop them all; each on
    the event loop ``loop`` names, layerserve's default unless told (server/loops.py)."""
    context = multiprocessing.get_context("spawn")
    all_ready = context.Event()
    started = []
    for _ in range(processes):
        ready = context.Event()
        child = context.Process(target=_process, args=(model_file, host, port, ready, all_ready, loop, cached),
                                daemon=True)
        child.start()
        started.append((child, ready))
    for child, ready in started:
        while not ready.wait(0.2):
            if not child.is_alive():
                raise SystemExit(f"a bare server process exited with {child.exitcode} before serving")
    all_ready.set()
    stopping: list[int] = []  # a handler only appends: it may run while the loop below holds any lock
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopping.append(signum))
    while not stopping and all(child.is_alive() for child, _ in started):
        time.sleep(0.2)
    for child, _ in started:
        child.terminate()
        child.join(5)


class BareGrpcPeer(ServerProcess):
    """``with BareGrpcPeer(model_file) as floor: floor.address`` — the floor on free loopback ports."""

    def __init__(self, model_file: Path, processes: int | None = None, ready_timeout: float = 90.0,
                 loop: loops.LoopChoice = "auto", cached: bool = False) -> None:
        super().__init__(Path(model_file).parent, ready_timeout=ready_timeout)
        self.model_file = Path(model_file)
        self.processes = processes or usable_cores()
        self.loop = loop
        self.cached = cached

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.peers.bare_grpc", "--model-file", str(self.model_file),
                "--host", self.host, "--port", str(self.port), "--processes", str(self.processes),
                "--loop", self.loop] + (["--cached"] if self.cached else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=0, help="0: one per usable core")
    parser.add_argument("--loop", choices=loops.LOOP_CHOICES, default="auto", help="event loop, as layerserve's --loop")
    parser.add_argument("--cached", action="store_true",
                        help="answer a request seen before from its cached response: the transport alone")
    args = parser.parse_args(argv)
    serve(args.model_file, args.host, args.port, args.processes or usable_cores(), args.loop, args.cached)
    return 0


if __name__ == "__main__":
    sys.exit(main())
