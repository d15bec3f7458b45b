"""In process, the server's own sessions: the full graph, the plain chain of blocks, the chain with
native seams (server/seams.py, server/chains.py) and that chain composed into one session
(server/composed.py), interleaved run by run.

    python -m bench.chain_seams                                  # digits_cnn, batch 1 and 64
    python -m bench.chain_seams --model resnet50_shaped --batches 1,8 --repeats 10,6

The sessions are what ``layerserve serve`` loads with its defaults: ONNX Runtime's optimized copies
(in a temporary folder), one intra-op thread, the variants at the seams the load-time probe accepted,
and glibc's malloc tuned as the server tunes it (server/allocator.py).
Per batch: the median time of each, chain/full for each chain with the 10th-90th percentile of the
per-repeat ratios, and each block's median time in each chain (where the time goes). No server and no
transport: what a served chain adds on top is in ``python -m bench.grid`` (``chain_over_full``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.payloads import model_root
from layerserve.proto.manifest import version_folders
from layerserve.server import allocator, chains, repository, runtime
from layerserve.server.endpoints import TensorSpec


def _timed(graphs: list[runtime.Graph], feeds: dict[str, np.ndarray]) -> list[float]:
    values, seconds = dict(feeds), []
    for graph in graphs:
        began = time.perf_counter()
        values.update(graph.run({spec.name: values[spec.name] for spec in graph.inputs}))
        seconds.append(time.perf_counter() - began)
    return seconds


def _spread(ratios: list[float]) -> tuple[float, float]:
    ordered = sorted(ratios)
    decile = len(ordered) // 10
    return ordered[decile], ordered[-1 - decile]


def _input(spec: TensorSpec, batch: int) -> np.ndarray:
    shape = [batch if dim < 0 else dim for dim in spec.shape]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def measure(model: str, batches: list[int], repeats: dict[int, int]) -> dict:
    """Timings of the full graph and both chains of ``model`` at each batch size."""
    allocator.retain_freed_memory()
    root = model_root(model)
    with tempfile.TemporaryDirectory() as optimized:
        loaded = repository.load_version(model, version_folders(root / model)[-1],
                                         runtime.RuntimeOptions("cpu", optimized_dir=Path(optimized)))
        if not loaded.ready:
            raise SystemExit(f"{model}: {loaded.reason}")
        native, plain = loaded.block_chain, chains.BlockChain(loaded.blocks)
        count = len(loaded.blocks)
        report = {"model": model, "blocks": count, "native_seams": sorted(native.native), "batches": {}}
        for batch in batches:
            feeds = {loaded.full.inputs[0].name: _input(loaded.full.inputs[0], batch)}
            graphs = {"full": [loaded.full], "plain": plain.graphs(0, count), "native": native.graphs(0, count)}
            if native.whole is not None:  # the chain of every block as one session (server/composed.py)
                graphs["composed"] = [native.whole]
            for chosen in graphs.values():
                _timed(chosen, feeds)  # first runs allocate
            times: dict[str, list[list[float]]] = {label: [] for label in graphs}
            for _ in range(repeats[batch]):
                for label, chosen in graphs.items():
                    times[label].append(_timed(chosen, feeds))
            totals = {label: [sum(one) for one in many] for label, many in times.items()}
            row = {f"{label}_ms": statistics.median(values) * 1e3 for label, values in totals.items()}
            for label in graphs.keys() - {"full"}:
                ratios = [chain / full for chain, full in zip(totals[label], totals["full"], strict=True)]
                row[f"{label}_over_full"] = statistics.median(totals[label]) / statistics.median(totals["full"])
                row[f"{label}_spread"] = _spread(ratios)
                row[f"{label}_blocks_ms"] = [statistics.median(block) * 1e3 for block in zip(*times[label], strict=True)]
            report["batches"][batch] = row
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--repeats", default="400,60", help="repeats per batch size, in --batches order")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    repeats = dict(zip(batches, (int(r) for r in args.repeats.split(",")), strict=True))
    report = measure(args.model, batches, repeats)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['model']}: {report['blocks']} blocks, native seams {report['native_seams']}")
    for batch, row in report["batches"].items():
        print(f"batch {batch}: full {row['full_ms']:.3f} ms | plain chain {row['plain_ms']:.3f} ms, "
              f"{row['plain_over_full']:.3f}x ({row['plain_spread'][0]:.3f}-{row['plain_spread'][1]:.3f}) | "
              f"native seams {row['native_ms']:.3f} ms, {row['native_over_full']:.3f}x "
              f"({row['native_spread'][0]:.3f}-{row['native_spread'][1]:.3f})"
              + (f" | composed {row['composed_ms']:.3f} ms, {row['composed_over_full']:.3f}x "
                 f"({row['composed_spread'][0]:.3f}-{row['composed_spread'][1]:.3f})" if "composed_ms" in row else ""))
        for label in ("plain", "native"):
            print(f"  {label:<7} per block ms: " + ", ".join(f"{ms:.3f}" for ms in row[f"{label}_blocks_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
