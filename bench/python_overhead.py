"""Our own Python per request: ModelInfer through the servicer and DataPlane, without gRPC or ONNX Runtime.

On the shared two cores, served throughput moves by ±10 % between runs, which hides a change of a few
microseconds per request. This measures what such a change touches, and nothing else:
``InferenceServicer.ModelInfer`` on one batch-1 request, with every graph's run replaced by its cached
answer, on one of two paths:

* ``loop`` (default): one request at a time, awaited in a loop: the path a lone request takes (run on
  the event loop). Reported: wall microseconds per request.
* ``batched``: one request at a time, none ever counted alone: the path of a request on a loaded server
  that finds the queue empty, as at 16 clients (ModelStatistics shows 1.00 rows per run there): the
  batching task, the run slots, the hand-off to a worker thread and back. Reported: CPU microseconds per
  request, every thread of the process counted (the event loop waits for the thread in between).

Minimum and median of ``--rounds`` rounds. Compare two commits by running it from each checkout.

    python -m bench.python_overhead                       # digits_cnn from models/, the loop path
    python -m bench.python_overhead --path batched        # through the batching task and a worker thread
    python -m bench.python_overhead --path batched --instances 0   # the same, the run on the event loop
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable

from bench.payloads import COMMITTED, infer_request, manifest, model_input
from layerserve.proto.manifest import version_folders
from layerserve.server import dataplane, metrics, runtime
from layerserve.server.grpc_inference import InferenceServicer
from layerserve.server.repository import Repository


class _NoDeadline:
    """The one thing ModelInfer asks of its gRPC context."""

    def time_remaining(self) -> None:
        return None


PATHS = ("loop", "batched")


def measure(model: str, rounds: int, calls: int, path: str = "loop", instances: int | None = None) -> list[float]:
    """Microseconds per ModelInfer, one value per round (the stubs are undone before it returns): wall
    time on the ``loop`` path, process CPU time on the ``batched`` one. ``instances`` as the server's
    ``--instances`` (None: auto; 0: the batched path's runs on the event loop, no thread)."""
    folder, spec = manifest(COMMITTED, model)
    inputs = model_input(spec, 1)
    answer = runtime.Graph(folder / spec.full_model.path, runtime.RuntimeOptions()).run(inputs)
    run, quiet = runtime.Graph.run, dataplane.QUIET_S
    runtime.Graph.run = lambda self, feeds: dict(answer)  # every graph answers at once: only our code is left
    # loop: every request counts as alone (the event-loop path, no thread); batched: none ever does.
    dataplane.QUIET_S = 0.0 if path == "loop" else float("inf")
    plane = None
    try:
        repository = Repository.load(COMMITTED, runtime.RuntimeOptions())
        plane = dataplane.DataPlane(repository, instances=instances, observer=metrics.PrometheusObserver(
            repository.served_names()), cores=2)
        request, servicer = infer_request(model, inputs), InferenceServicer(plane)
        return asyncio.run(_rounds(servicer, request, rounds, calls,
                                   time.perf_counter if path == "loop" else time.process_time))
    finally:
        runtime.Graph.run, dataplane.QUIET_S = run, quiet
        if plane is not None and plane.executor is not None:
            plane.executor.shutdown(wait=True)


async def _rounds(servicer: InferenceServicer, request: object, rounds: int, calls: int,
                  clock: Callable[[], float] = time.perf_counter) -> list[float]:
    context = _NoDeadline()
    for _ in range(calls // 10):
        await servicer.ModelInfer(request, context)
    per_call = []
    for _ in range(rounds):
        start = clock()
        for _ in range(calls):
            await servicer.ModelInfer(request, context)
        per_call.append((clock() - start) / calls * 1e6)
    return per_call


def _instances(text: str) -> int | None:
    """``--instances``: auto (None) or a count of at least 0, as the server takes it."""
    if text == "auto":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 0, got {text[:40]!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    committed = sorted(folder.name for folder in COMMITTED.iterdir() if folder.is_dir() and version_folders(folder))
    parser.add_argument("--model", default="digits_cnn", choices=committed,
                        help="a model of the committed repository (models/)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--path", choices=PATHS, default="loop",
                        help="loop: one request at a time, run on the event loop (wall us); batched: "
                             "never alone, through the batching task and a worker thread (CPU us)")
    parser.add_argument("--instances", type=_instances, default=None, metavar="auto|N",
                        help="as the server's --instances: auto (default), or N (0: runs on the event loop, no thread)")
    args = parser.parse_args(argv)
    values = measure(args.model, args.rounds, args.calls, args.path, args.instances)
    unit = "us" if args.path == "loop" else "us of CPU"
    print(f"{args.model}, {args.path} path, --instances {'auto' if args.instances is None else args.instances}: our Python per batch-1 ModelInfer (no gRPC, ONNX Runtime stubbed): "
          f"min {min(values):.1f} {unit}, median {statistics.median(values):.1f} {unit} "
          f"over {args.rounds} x {args.calls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
