"""``make bench``: the benchmark suite in one run; JSON, a Markdown table and plots under ``--out``.

    python -m bench.run                      # full suite, 3 repeats (~15 min on 2 cores)
    python -m bench.run --quick              # 1 repeat, short cells (~3-4 min)
    python -m bench.run --models digits_cnn --no-kserve

Per model (digits_cnn, overhead-bound; resnet18_shaped, compute-bound, random weights): in-process
full/block/chain vs the same endpoints served (c=1), the client chain vs the server chain, a
concurrency sweep; dynamic batching off / on 0 µs / on 500 µs at c=16; for digits_cnn, KServe's
ModelServer (as shipped and with our ONNX Runtime options) vs layerserve at c=1 and c=16, the same
over HTTP/REST (batch 1 with 1 and 16 clients, batch 64 with 4; binary and JSON tensors;
``--rest-only`` runs just that), and a py-spy profile of each at c=16. Every cell is repeated ``--repeats`` times, interleaved; the report
gives median and min-max. The load generator runs in this process on the same two cores, unpinned;
its CPU per request and share of a core are recorded with every served cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import grid, memory, report
from bench.inprocess import InProcess
from bench.machine import cpu_ticks, machine_info, stolen_share
from bench.payloads import manifest, model_input, model_root
from bench.peers.kserve_peer import KServePeer
from bench.profile import profile_during
from bench.served import client_chain, served
from bench.sweep import interleaved, interleaved_rest, layerserve
from layerserve.proto import names

REPO_ROOT = Path(__file__).resolve().parent.parent
# The served configuration every served-vs-in-process cell uses: batching on, no added delay.
MAIN_FLAGS = ["--max-queue-delay-us", "0"]
SWEEP = [1, 4, 16, 64]
# HTTP/REST against KServe's REST: (batch, clients) cells, each with binary tensors (tritonclient.http's
# default) and JSON data arrays (curl's).
REST_CELLS = [(1, 1), (1, 16), (64, 4)]
REST_ENCODINGS = ["binary", "json"]


@dataclass(frozen=True)
class Plan:
    """How long each kind of cell runs for one model (seconds), and what it covers."""

    batches: tuple[int, ...] = (1, 64)
    cell_s: dict[int, float] = field(default_factory=lambda: {1: 2.0, 64: 2.0})
    warmup_s: dict[int, float] = field(default_factory=lambda: {1: 0.5, 64: 0.5})
    min_runs: dict[int, int] = field(default_factory=lambda: {1: 20, 64: 5})
    client_chain_batches: tuple[int, ...] = (1, 64)
    sweep_s: float = 2.0
    compare_s: float = 2.5


PLANS = {
    "digits_cnn": Plan(),
    # ~35 ms per image, ~7 s per batch of 64 on one core: batch-64 cells time single requests.
    "resnet18_shaped": Plan(cell_s={1: 3.0, 64: 0.1}, warmup_s={1: 0.5, 64: 0.0}, min_runs={1: 10, 64: 1},
                            client_chain_batches=(1,), sweep_s=5.0, compare_s=6.0),
}


def quick(plan: Plan) -> Plan:
    """Shorter cells for --quick (about a third of the time per cell)."""
    return Plan(
        batches=plan.batches,
        cell_s={b: (s if s < 1 else max(1.0, s / 2)) for b, s in plan.cell_s.items()},
        warmup_s={b: min(s, 0.3) for b, s in plan.warmup_s.items()},
        min_runs={b: max(1, n // 2) for b, n in plan.min_runs.items()},
        client_chain_batches=plan.client_chain_batches,
        sweep_s=max(1.0, plan.sweep_s / 2),
        compare_s=max(1.0, plan.compare_s / 2),
    )


def log(message: str) -> None:
    print(message, flush=True)


def _inprocess_record(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "runs": len(times),
        "p50_ms": statistics.median(times) * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1e3,
        "throughput": len(times) / sum(times),
    }


def measure_model(model: str, plan: Plan, repeats: int, kserve: bool, profile: bool, out: Path) -> dict:
    """Every cell for ``model``; JSON-ready: cells[key] is one record per repeat."""
    root = model_root(model)
    folder, spec = manifest(root, model)
    inprocess = InProcess(root)
    blocks = inprocess.blocks(model)
    block = blocks[0].name
    chain_blocks = [(b.name, [s.name for s in b.inputs]) for b in blocks]
    cells: dict[str, list[dict]] = {}

    def add(key: str, record: dict) -> None:
        cells.setdefault(key, []).append(record)

    log(f"== {model}: {len(blocks)} blocks; 'block' target is {block}")
    with layerserve(root, *MAIN_FLAGS)() as server:
        pid = server.process.pid
        for repeat in range(repeats):
            for batch in plan.batches:
                x = model_input(spec, batch)
                for kind, name in (("full", model), ("block", block), ("chain", names.chain_name(model))):
                    times = inprocess.time_runs(name, x, plan.cell_s[batch], plan.min_runs[batch])
                    add(f"inprocess/{kind}/b{batch}", _inprocess_record(times))
                    cell = served(server.address, name, x, 1, plan.cell_s[batch], plan.warmup_s[batch], pid)
                    add(f"served/{kind}/b{batch}", cell.record())
                    log(f"  [{repeat + 1}/{repeats}] b{batch:<3} {kind:<6} in-process p50 "
                        f"{statistics.median(times) * 1e3:9.3f} ms   served p50 {cell.result.p50_ms:9.3f} ms")
                if batch in plan.client_chain_batches:
                    cell = client_chain(server.address, chain_blocks, x, plan.cell_s[batch], plan.warmup_s[batch])
                    add(f"client_chain/b{batch}", cell.record())
                    log(f"  [{repeat + 1}/{repeats}] b{batch:<3} client chain p50 {cell.result.p50_ms:9.3f} ms, "
                        f"{cell.bytes_moved:,} bytes moved")
            x1 = model_input(spec, 1)
            for concurrency in SWEEP:
                cell = served(server.address, model, x1, concurrency, plan.sweep_s, plan.warmup_s[1], pid)
                add(f"sweep/c{concurrency}", cell.record())
                log(f"  [{repeat + 1}/{repeats}] sweep c={concurrency:<3} {cell.result.throughput:8.1f} req/s "
                    f"p50 {cell.result.p50_ms:8.2f} p99 {cell.result.p99_ms:8.2f} ms")
    del inprocess

    log(f"== {model}: dynamic batching at c=16 (and c=1)")
    batching = interleaved(
        {"off": layerserve(root, "--dynamic-batching", "false"),
         "on, 0 us delay": layerserve(root, *MAIN_FLAGS),
         "on, 500 us delay (manifest)": layerserve(root, "--max-queue-delay-us", "500")},
        model, model_input(spec, 1), [1, 16], repeats, plan.compare_s, plan.warmup_s[1], log)

    result: dict = {"model": model, "blocks": [b.name for b in blocks], "block_target": block,
                    "input": {s.name: [int(d) for d in s.shape] for s in spec.inputs},
                    "cells": cells, "batching": batching}
    if kserve:
        log(f"== {model}: KServe ModelServer vs layerserve, full model, batch 1")
        model_file = folder / spec.full_model.path
        result["kserve"] = interleaved(
            {"layerserve": layerserve(root, *MAIN_FLAGS),
             "KServe as shipped": lambda: KServePeer(model_file, model),
             "KServe tuned": lambda: KServePeer(model_file, model, tuned=True)},
            model, model_input(spec, 1), [1, 16], repeats, plan.compare_s, plan.warmup_s[1], log)
        result["rest"] = rest_comparison(root, model, model_file, spec, repeats, plan)
        if profile:
            result["profiles"] = {}
            for label, factory in (("layerserve", layerserve(root, *MAIN_FLAGS)),
                                   ("KServe tuned", lambda: KServePeer(model_file, model, tuned=True))):
                with factory() as server:
                    x1 = model_input(spec, 1)
                    summary = profile_during(
                        server.process.pid, 4,
                        lambda s=server, x=x1: served(s.address, model, x, 16, 5.5, 0.2, s.process.pid).record(),
                        stacks_out=REPO_ROOT / "bench" / "out" / f"profile-{model}-{label.replace(' ', '_')}.txt")
                result["profiles"][label] = summary
                log(f"  profile {label}: GIL held {summary['gil_held_share']:.0%}; {summary['area_percent']}")
    return result


def rest_comparison(root: Path, model: str, model_file: Path, spec, repeats: int, plan: Plan) -> dict:  # noqa: ANN001
    """layerserve's HTTP/REST vs KServe's REST (as shipped and tuned), full graph, REST_CELLS, interleaved."""
    log(f"== {model}: HTTP/REST, layerserve vs KServe ModelServer's REST")
    return interleaved_rest(
        {"layerserve": layerserve(root, *MAIN_FLAGS),
         "KServe as shipped": lambda: KServePeer(model_file, model),
         "KServe tuned": lambda: KServePeer(model_file, model, tuned=True)},
        model, lambda batch: model_input(spec, batch), REST_CELLS, REST_ENCODINGS, repeats, plan.compare_s,
        plan.warmup_s[1], log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, shorter cells")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per cell (default 3, 1 with --quick)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench")
    parser.add_argument("--models", default="digits_cnn,resnet18_shaped")
    parser.add_argument("--no-kserve", action="store_true", help="skip the KServe comparison")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument("--no-grid", action="store_true", help="skip issue 12's grid and memory row (bench.grid, "
                        "bench.memory)")
    parser.add_argument("--rest-only", action="store_true",
                        help="only the HTTP/REST comparison with KServe (digits_cnn); results to --out as usual")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    started, ticks = time.monotonic(), cpu_ticks()
    results = {"machine": machine_info(), "repeats": repeats, "quick": args.quick,
               "served_flags": MAIN_FLAGS, "models": {}}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        plan = quick(PLANS.get(model, Plan())) if args.quick else PLANS.get(model, Plan())
        if args.rest_only:
            root = model_root(model)
            folder, spec = manifest(root, model)
            results["models"][model] = {"rest": rest_comparison(root, model, folder / spec.full_model.path, spec,
                                                                repeats, plan)}
            break
        kserve = not args.no_kserve and model == "digits_cnn"
        results["models"][model] = measure_model(model, plan, repeats, kserve, not args.no_profile, args.out)
    if not args.no_grid and not args.rest_only:
        log("== the grid: layerserve defaults vs KServe tuned and the floor (bench.grid), and the memory row (bench.memory)")
        grid_models = ("digits_cnn", "resnet50_shaped")
        results["grid"] = {model: grid.measure(model, repeats, 4.0 if model == "digits_cnn" else 8.0, {}, not args.no_kserve)
                           for model in grid_models}
        results["memory"] = memory.measure(model_root("resnet50_shaped"), "resnet50_shaped", 6.0)
    results["machine"]["load_average_1m_end"] = machine_info()["load_average_1m"]
    results["machine"]["stolen"] = stolen_share(ticks, cpu_ticks())
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["summary"] = report.write(results, args.out)
    if "grid" in results:
        text = (args.out / "results.md").read_text()
        text += "\n## The grid (issue 12): layerserve defaults vs KServe tuned and the bare grpc.aio floor\n\n" + grid.markdown(
            {"models": results["grid"]}) + "\n" + memory.markdown(results["memory"]) + "\n"
        (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    log(f"wrote {args.out}/results.json, results.md and plots in {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
