"""Memory a hostile client can make the server hold: refused oversized messages and a stalled reader.

Two clients of #13 (item 8), each against a fresh ``layerserve serve --workers 1`` (one process, so
its VmRSS is the whole server), once with the old limits (64 MiB messages, unlimited streams per
connection; the memory janitor's budget then 512 MiB, so it never acts) and once with the defaults
(message limit derived from the models, 128 streams, janitor budget 64 MiB):

- **refused**: ``--refused`` messages of 65 MiB sent one after the other on one channel; every
  one is refused (RESOURCE_EXHAUSTED). RSS before and after.
- **stalled reader**: a client process sends ``--streams`` ModelInfer requests whose answers are
  ``--model``'s largest output at its max batch, then stops itself (SIGSTOP), so it never reads an
  answer. RSS while it is stopped, and after it is killed.

::

    python -m bench.hostile_memory --out bench/out/hostile_memory.json
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from bench.machine import rss_kib
from bench.output import emit
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import names
from layerserve.proto.manifest import read_manifest, version_folders
from layerserve.server.launcher import ServerProcess

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
OLD_LIMITS = ["--max-message-bytes", str(64 << 20), "--max-concurrent-streams", str(2**31 - 1)]
SETTLE_S = 7.0  # longer than the server's memory janitor period (1 s) and its idle wait (1 s)

# The stalled reader: sends every request, then SIGSTOPs itself with the answers unread.
_STALLED_CLIENT = """
import os, signal, sys, time, grpc
address, path, streams = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload = open(path, "rb").read()
channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 1 << 30),
                                                  ("grpc.max_receive_message_length", 1 << 30)])
call = channel.unary_unary(sys.argv[4], request_serializer=None, response_deserializer=None)
futures = [call.future(payload, timeout=600) for _ in range(streams)]
time.sleep(2.0)  # let them all go out
print("sent", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def largest_output_request(models: Path, model: str) -> tuple[bytes, str, int]:
    """A max-batch request for the block of ``model`` with the largest output; (bytes, name, answer bytes)."""
    manifest = read_manifest(version_folders(models / model)[-1])
    rows = manifest.serving.max_batch_size or 64
    block = max(manifest.blocks, key=lambda b: math.prod(b.outputs[0].shape[1:]))
    spec = block.inputs[0]
    array = np.random.default_rng(0).standard_normal((rows, *spec.shape[1:])).astype(np.float32)
    request = pb.ModelInferRequest(model_name=names.block_name(model, block.name))
    request.inputs.add(name=spec.name, datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    answer = 4 * rows * math.prod(block.outputs[0].shape[1:])
    return request.SerializeToString(), request.model_name, answer


def refused(address: str, count: int, size: int) -> dict[str, int]:
    """Send ``count`` messages of ``size`` bytes; the status codes they got."""
    codes: dict[str, int] = {}
    options = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    with grpc.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        payload = b"\0" * size  # never parsed: refused by its length
        for _ in range(count):
            try:
                call(payload, timeout=120)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            codes[code] = codes.get(code, 0) + 1
    return codes


def stalled_reader(address: str, payload: bytes, streams: int, pid: int, workdir: Path) -> dict[str, int]:
    """RSS (KiB) of ``pid`` while a client that never reads holds ``streams`` requests, and after it dies."""
    path = workdir / "stalled-request.bin"
    path.write_bytes(payload)
    client = subprocess.Popen([sys.executable, "-c", _STALLED_CLIENT, address, str(path), str(streams), MODEL_INFER],
                              stdout=subprocess.PIPE, text=True)
    try:
        client.stdout.readline()  # "sent", then it stops itself
        time.sleep(SETTLE_S)
        held = rss_kib(pid)
    finally:
        client.kill()
        client.wait()
    time.sleep(SETTLE_S)
    return {"while_stalled": held, "after_client_killed": rss_kib(pid)}


def _server(models: Path, flags: list[str]) -> ServerProcess:
    return ServerProcess(models, ["--workers", "1", "--log-level", "WARNING", *flags])


def _warm(address: str, payload: bytes) -> None:
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 1 << 30)]) as channel:
        call = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        for _ in range(20):  # sessions, allocator pools
            call(payload, timeout=60)
    time.sleep(1.0)


def measure(models: Path, flags: list[str], args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """Both clients, each against its own fresh server started with ``flags``."""
    payload, name, answer_bytes = largest_output_request(models, args.model)
    with _server(models, flags) as server:
        pid = server.process.pid
        _warm(server.address, payload)
        start = rss_kib(pid)
        codes = refused(server.address, args.refused, args.refused_bytes)
        time.sleep(SETTLE_S)
        after_refused = rss_kib(pid)
    with _server(models, flags) as server:
        pid = server.process.pid
        _warm(server.address, payload)
        stalled_start = rss_kib(pid)
        stalled = stalled_reader(server.address, payload, args.streams, pid, workdir)
        alive = server.process.poll() is None
    return {
        "flags": flags, "endpoint": name, "answer_bytes": answer_bytes,
        "refused": {"codes": codes, "rss_kib_before": start, "rss_kib_after": after_refused,
                    "growth_mib": round((after_refused - start) / 1024, 1)},
        "stalled_reader": {"streams": args.streams, "rss_kib_before": stalled_start,
                           "rss_kib_while_stalled": stalled["while_stalled"],
                           "held_mib": round((stalled["while_stalled"] - stalled_start) / 1024, 1),
                           "rss_kib_after_client_killed": stalled["after_client_killed"]},
        "server_alive": alive,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--refused", type=int, default=8, help="oversized messages to send")
    parser.add_argument("--refused-bytes", type=int, default=65 << 20)
    parser.add_argument("--streams", type=int, default=400, help="requests the stalled reader sends")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    workdir = Path(os.environ.get("TMPDIR", "/tmp"))
    result = {
        "before (64 MiB, unlimited streams)": measure(args.models, OLD_LIMITS, args, workdir),
        "after (defaults)": measure(args.models, [], args, workdir),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
