"""Our own Python per request: ModelInfer through the servicer and DataPlane, without gRPC or ONNX Runtime.

On the shared two cores, served throughput moves by ±10 % between runs, which hides a change of a few
microseconds per request. This measures what such a change touches, and nothing else:
``InferenceServicer.ModelInfer`` on one batch-1 request, awaited in a loop on one event loop, on the
path a lone request takes (run on the loop), with every graph's run replaced by its cached answer.
Reported: microseconds per request, minimum and median of ``--rounds`` rounds. Compare two commits by
running it from each checkout.

    python -m bench.python_overhead                       # digits_cnn from models/
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from bench.payloads import COMMITTED, infer_request, manifest, model_input
from layerserve.server import dataplane, metrics, runtime
from layerserve.server.grpc_inference import InferenceServicer
from layerserve.server.repository import Repository


class _NoDeadline:
    """The one thing ModelInfer asks of its gRPC context."""

    def time_remaining(self) -> None:
        return None


def measure(model: str, rounds: int, calls: int) -> list[float]:
    """Microseconds per ModelInfer, one value per round (the stubs are undone before it returns)."""
    folder, spec = manifest(COMMITTED, model)
    inputs = model_input(spec, 1)
    answer = runtime.Graph(folder / spec.full_model.path, runtime.RuntimeOptions()).run(inputs)
    run, quiet = runtime.Graph.run, dataplane.QUIET_S
    runtime.Graph.run = lambda self, feeds: dict(answer)  # every graph answers at once: only our code is left
    dataplane.QUIET_S = 0.0  # every request counts as alone: the event-loop path, no thread
    try:
        repository = Repository.load(COMMITTED, runtime.RuntimeOptions())
        plane = dataplane.DataPlane(repository, instances=None, observer=metrics.PrometheusObserver(
            repository.served_names()), cores=2)
        return asyncio.run(_rounds(InferenceServicer(plane), infer_request(model, inputs), rounds, calls))
    finally:
        runtime.Graph.run, dataplane.QUIET_S = run, quiet


async def _rounds(servicer: InferenceServicer, request: object, rounds: int, calls: int) -> list[float]:
    context = _NoDeadline()
    for _ in range(calls // 10):
        await servicer.ModelInfer(request, context)
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            await servicer.ModelInfer(request, context)
        per_call.append((time.perf_counter() - start) / calls * 1e6)
    return per_call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_cnn", help="a model of the committed repository (models/)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args(argv)
    values = measure(args.model, args.rounds, args.calls)
    print(f"{args.model}: our Python per batch-1 ModelInfer (no gRPC, ONNX Runtime stubbed): "
          f"min {min(values):.1f} us, median {statistics.median(values):.1f} us over {args.rounds} x {args.calls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
