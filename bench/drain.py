"""Shutdown under load: what clients sending without pause get when the server drains.

Starts ``layerserve serve`` over a model repository, has ``--threads`` client threads send
ModelInfer back to back (each on its own connection), sends SIGTERM after ``--load-s`` seconds
and counts the status codes until the server has exited; ``--rounds`` times, with and without
the retry policy docs/server.md recommends. OK and UNAVAILABLE are right answers; CANCELLED is
what gRPC's own stop gives a call that has arrived but not reached a handler::

    python -m bench.drain --models models --rounds 5 --out bench/out/drain.json
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import threading
import time
from pathlib import Path

import grpc

from bench.output import emit
from bench.soak import request_and_answer
from layerserve.server.launcher import ServerProcess

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
RETRYING = json.dumps({"methodConfig": [{
    "name": [{"service": "inference.GRPCInferenceService"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


def one_shutdown(models: Path, payload: bytes, workers: str, threads: int, load_s: float,
                 retrying: bool) -> dict[str, object]:
    """Status codes of every request sent while the server ran, drained and exited."""
    codes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()
    options = [("grpc.use_local_subchannel_pool", 1)]
    if retrying:
        options += [("grpc.service_config", RETRYING), ("grpc.enable_retries", 1)]
    with ServerProcess(models, ["--workers", workers, "--metrics-port", "-1", "--log-level", "WARNING"]) as server:

        def send() -> None:
            with grpc.insecure_channel(server.address, options=options) as channel:
                call = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
                while not stop.is_set():
                    try:
                        call(payload, timeout=10)
                        code = "OK"
                    except grpc.RpcError as error:
                        code = error.code().name
                    with lock:
                        codes[code] += 1
                    if code == "UNAVAILABLE":
                        time.sleep(0.01)

        clients = [threading.Thread(target=send) for _ in range(threads)]
        for client in clients:
            client.start()
        time.sleep(load_s)
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(60)
        stop.set()
        for client in clients:
            client.join(30)
    return {"exit_code": exit_code, "codes": dict(codes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--workers", default="1")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--load-s", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    payload, _ = request_and_answer(args.models, args.model)
    result = {}
    for retrying in (False, True):
        rounds = [one_shutdown(args.models, payload, args.workers, args.threads, args.load_s, retrying)
                  for _ in range(args.rounds)]
        result["retry policy" if retrying else "no retries"] = {
            "rounds": rounds,
            "exit_codes": sorted({r["exit_code"] for r in rounds}),
            "cancelled_per_round": [r["codes"].get("CANCELLED", 0) for r in rounds],
        }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
