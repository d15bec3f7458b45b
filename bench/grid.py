"""The performance grid of issue 12: layerserve with its defaults against KServe tuned, in one run.

    python -m bench.grid                                   # digits_cnn and resnet50_shaped, 3 repeats
    python -m bench.grid --models digits_cnn --variant "intra 2=--intra-op-threads 2"

Every repeat starts each server of a model afresh and measures them in turn, in the opposite order
every other repeat, so drift on the shared two cores hits each alike and each repeat also samples what a
server start decides: four identical layerserve instances, side by side for six rounds, kept medians up
to 9 % apart (docs/BENCHMARKS.md, "Issue 12, fifth pass"), a bias that rounds on one instance cannot
average away. Cells, on the full graph unless said:

* ``b1_c1``: batch 1, one client: p50 latency (ms);
* ``b1_c16``: batch 1, 16 clients (a connection each): images per second;
* ``b64_c4``: batch 64, 4 clients: images per second;
* ``one_process_8_threads``: one client process, 8 threads, each with its own tritonclient
  ``InferenceServerClient`` (gRPC shares one connection between them, as users get by default),
  batch 1: images per second;
* ``chain_over_full``: for each layerserve configuration, ``<model>.chain``'s p50 over the full graph's,
  batch 1 and 64, one client on one connection (one worker) alternating between the two, three times
  (``--variant "per-block chain=--composed-chain false"`` compares the chain run block by block,
  ``--variant "plain seams=--native-seams false"`` chains without native seams);
* in-process floors: ``onnxruntime.InferenceSession(model.onnx)`` with default options in this process,
  batch 1 and 64: images per second;
* ``stolen``: for each cell (and the in-process floors), per repeat, the share of the machine's CPU
  time the hypervisor took meanwhile (``/proc/stat`` steal). On a shared VM a cell is slow for every
  server when it is high: it is what made batch 1's p50 read 3 ms instead of 1.3 (docs/BENCHMARKS.md).

Extra layerserve configurations (``--variant LABEL=FLAGS``) join the same interleaving, to compare a
flag against the defaults. So does the transport's floor (bench/peers/bare_grpc.py, unless ``--no-floor``):
grpc.aio processes that only decode, run the full graph and encode, what any Python gRPC server
spends whatever else it does. So does the transport alone (the same processes answering a repeated
request from a cache, unless ``--no-transport``): the client and gRPC with no compute, which bounds what
any server can reach of in-process throughput here (``transport_ceilings``). Results: ``--out`` JSON,
and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.loadgen import alternating_p50
from bench.machine import cpu_ticks, machine_info, stolen_share
from bench.payloads import infer_request, manifest, model_input, model_root
from bench.peers.bare_grpc import BareGrpcPeer
from bench.peers.kserve_peer import KServePeer
from bench.served import served
from bench.sweep import layerserve
from layerserve.proto import names

REPO_ROOT = Path(__file__).resolve().parent.parent
CELLS = ("b1_c1", "b1_c16", "b64_c4", "one_process_8_threads")
# resnet50_shaped runs ~12 images/s per core: batch-64 cells would take a minute per request; and KServe
# refuses gRPC messages over 8 MiB (batch 16 is 9.6 MB), so its large batch is 8.
BATCH_LARGE = {"digits_cnn": 64, "digits_resnet": 64, "resnet50_shaped": 8}
FLOOR = "bare grpc.aio + ONNX Runtime (floor)"
TRANSPORT = "bare grpc.aio, cached answers (transport alone)"
INPROCESS = "in process"


def log(message: str) -> None:
    print(message, flush=True)


def inprocess_images_per_s(model_file: Path, x: np.ndarray, seconds: float) -> float:
    """ONNX Runtime as a user runs it: default session options (every core), one call at a time."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    runs, began = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - began < seconds:
        session.run(None, {name: x})
        runs += 1
    return runs * len(x) / (time.perf_counter() - began)


def triton_threads(address: str, model: str, input_name: str, x: np.ndarray, threads: int, seconds: float) -> float:
    """Images per second of ``threads`` threads in this one process, each with its own tritonclient client."""
    import tritonclient.grpc as triton

    done = [0] * threads
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds + 1.0
    start_at = time.perf_counter() + 1.0  # the first second warms up

    def client(index: int) -> None:
        with triton.InferenceServerClient(address) as connection:
            tensor = triton.InferInput(input_name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            while (now := time.perf_counter()) < stop_at:
                try:
                    connection.infer(model, [tensor])
                except Exception as error:  # noqa: BLE001 - counted, reported below
                    errors.append(str(error)[:120])
                    continue
                if now >= start_at:
                    done[index] += 1

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        log(f"    {len(errors)} errors, e.g. {errors[0]}")
    return sum(done) * len(x) / seconds


def _servers(root: Path, model: str, model_file: Path, variants: dict[str, list[str]],
             kserve: bool, floor: bool, transport: bool) -> dict[str, Callable[[], object]]:
    servers: dict[str, Callable[[], object]] = {"layerserve (defaults)": layerserve(root)}
    for label, flags in variants.items():
        servers[f"layerserve ({label})"] = layerserve(root, *flags)
    if kserve:
        servers["KServe tuned"] = lambda: KServePeer(model_file, model, tuned=True)
    if floor:
        servers[FLOOR] = lambda: BareGrpcPeer(model_file)
    if transport:
        servers[TRANSPORT] = lambda: BareGrpcPeer(model_file, cached=True)
    return servers


def measure(model: str, repeats: int, seconds: float, variants: dict[str, list[str]], kserve: bool,
            floor: bool = True, transport: bool = True) -> dict:
    """model -> {"cells": label -> cell -> [values], "inprocess": ..., "chain_over_full": label -> batch -> [values]}."""
    root = model_root(model)
    folder, spec = manifest(root, model)
    model_file = folder / spec.full_model.path
    large = BATCH_LARGE.get(model, 64)
    x1, xl = model_input(spec, 1), model_input(spec, large)
    input_name = spec.inputs[0].name
    cells: dict[str, dict[str, list[float]]] = {}
    chain_ratio: dict[str, dict[str, list[float]]] = {}
    inprocess: dict[str, list[float]] = {"b1": [], f"b{large}": []}
    stolen: dict[str, dict[str, list[float]]] = {}  # label -> cell -> per repeat, the hypervisor's share meanwhile

    def add(label: str, cell: str, value: float) -> None:
        cells.setdefault(label, {}).setdefault(cell, []).append(value)

    factories = _servers(root, model, model_file, variants, kserve, floor, transport)
    for repeat in range(repeats):
        for key, x in (("b1", x1), (f"b{large}", xl)):
            ticks = cpu_ticks()
            inprocess[key].append(inprocess_images_per_s(model_file, x[input_name], seconds))
            stolen.setdefault(INPROCESS, {}).setdefault(key, []).append(stolen_share(ticks, cpu_ticks()))
        log(f"[{repeat + 1}/{repeats}] {model} in-process: b1 {inprocess['b1'][-1]:.1f}, "
            f"b{large} {inprocess[f'b{large}'][-1]:.1f} img/s | stolen "
            + ", ".join(f"{shares[-1]:.0%}" for shares in stolen[INPROCESS].values()))
        order = list(factories.items())
        if repeat % 2:
            order.reverse()
        with contextlib.ExitStack() as stack:  # fresh servers each repeat, stopped before the next one's start
            started = {label: stack.enter_context(factory()) for label, factory in order}
            warmup = min(0.5, seconds)  # 0.5 s at the grid's seconds per cell; less only for the tests' short cells
            for label, server in started.items():
                pid = server.process.pid
                measured = [served(server.address, model, x, clients, seconds, warmup, pid)
                             for x, clients in ((x1, 1), (x1, 16), (xl, 4))]
                ticks = cpu_ticks()
                threads = triton_threads(server.address, model, input_name, x1[input_name], 8, seconds)
                shares = dict(zip(CELLS, [cell.stolen for cell in measured] + [stolen_share(ticks, cpu_ticks())],
                                  strict=True))
                c1, c16, c4 = (cell.result for cell in measured)
                add(label, "b1_c1", c1.p50_ms)
                add(label, "b1_c16", c16.throughput)
                add(label, "b64_c4", c4.throughput * large)
                add(label, "one_process_8_threads", threads)
                for cell, share in shares.items():
                    stolen.setdefault(label, {}).setdefault(cell, []).append(share)
                errors = c1.errors + c16.errors + c4.errors
                log(f"  {label:<28} b1 c1 p50 {c1.p50_ms:7.2f} ms | b1 c16 {c16.throughput:8.1f} img/s | "
                    f"b{large} c4 {c4.throughput * large:8.1f} img/s | 8 threads {threads:8.1f} img/s"
                    " | stolen " + ", ".join(f"{share:.0%}" for share in shares.values())
                    + (f" | {errors} errors" if errors else ""))
                if label.startswith("layerserve"):
                    ratios = chain_ratio.setdefault(label, {"b1": [], f"b{large}": []})
                    for key, x in (("b1", x1), (f"b{large}", xl)):
                        full, chain = alternating_p50(server.address, [
                            infer_request(model, x).SerializeToString(),
                            infer_request(names.chain_name(model), x).SerializeToString()], 3, seconds / 3)
                        ratios[key].append(statistics.median(chain) / statistics.median(full))
                    log(f"  chain/full: b1 {ratios['b1'][-1]:.3f}, b{large} {ratios[f'b{large}'][-1]:.3f}")
    return {"batch_large": large, "cells": cells, "inprocess": inprocess, "chain_over_full": chain_ratio,
            "stolen": stolen}


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def transport_ceilings(found: dict) -> dict[str, list[float]]:
    """Per repeat, how much of in-process throughput the transport alone leaves any server here.

    * ``one_process_8_threads``: the transport alone's rate over in-process batch 1: the client and gRPC
      with no compute at all, so a served rate above it is not possible on this machine;
    * ``b{large}_c4``: T / (T + P) for the transport alone's rate T and in-process rate P, both of which
      fill the same cores: if a served image costs the transport's CPU plus in-process compute, that is
      the most of P it can reach. An estimate, not a bound: a server may compute more cheaply than
      in-process ONNX Runtime's two spinning threads do.
    """
    cells = found["cells"].get(TRANSPORT)
    if not cells:
        return {}
    large = found["batch_large"]
    alone_large, alone_threads = cells["b64_c4"], cells["one_process_8_threads"]
    return {
        "one_process_8_threads": [t / p for t, p in zip(alone_threads, found["inprocess"]["b1"], strict=True)],
        f"b{large}_c4": [t / (t + p) for t, p in zip(alone_large, found["inprocess"][f"b{large}"], strict=True)],
    }


def _transport_ceilings(found: dict) -> list[str]:
    ceilings = transport_ceilings(found)
    if not ceilings:
        return []
    served = found["cells"].get("layerserve (defaults)", {})
    large = found["batch_large"]
    reached = {
        "one_process_8_threads": [s / p for s, p in zip(served.get("one_process_8_threads", []),
                                                        found["inprocess"]["b1"], strict=False)],
        f"b{large}_c4": [s / p for s, p in zip(served.get("b64_c4", []), found["inprocess"][f"b{large}"],
                                               strict=False)],
    }
    return ["What the transport alone leaves of in-process throughput, per repeat (bench.grid.transport_ceilings), "
            "and layerserve's share of in process: "
            + "; ".join(f"{cell} " + "/".join(f"{c:.2f}" for c in values)
                        + (" (layerserve " + "/".join(f"{r:.2f}" for r in reached[cell]) + ")" if reached[cell] else "")
                        for cell, values in ceilings.items())]


def markdown(results: dict) -> str:
    """One table per model: each server's cells (median, min-max) and the ratios the goals name."""
    lines = []
    for model, found in results["models"].items():
        large = found["batch_large"]
        lines += [f"### {model}", "",
                  f"| server | b1 c1 p50 ms | b1 c16 img/s | b{large} c4 img/s | 1 process, 8 threads img/s |",
                  "|---|---|---|---|---|"]
        for label, cells in found["cells"].items():
            row = [f"{_summary(cells[c])['median']:.2f} ({min(cells[c]):.2f}-{max(cells[c]):.2f})" for c in CELLS]
            lines.append(f"| {label} | " + " | ".join(row) + " |")
        floors = {k: _summary(v) for k, v in found["inprocess"].items()}
        lines += ["", "in-process ONNX Runtime (default options): "
                  + ", ".join(f"{k} {v['median']:.1f} img/s ({v['min']:.1f}-{v['max']:.1f})" for k, v in floors.items())]
        lines += _transport_ceilings(found)
        if found.get("stolen"):
            lines.append("CPU time the hypervisor took from this VM during each cell, per repeat: " + "; ".join(
                f"{label}: " + ", ".join(f"{cell} " + "/".join(f"{share:.0%}" for share in shares)
                                        for cell, shares in by_cell.items())
                for label, by_cell in found["stolen"].items()))
        for label, by_batch in found["chain_over_full"].items():
            ratios = {k: _summary(v) for k, v in by_batch.items()}
            lines.append(f"{label} chain / full p50: "
                         + ", ".join(f"{k} {v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f})" for k, v in ratios.items()))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits_cnn,resnet50_shaped")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=FLAGS",
                        help="another layerserve configuration to interleave, e.g. 'intra 2=--intra-op-threads 2'")
    parser.add_argument("--no-kserve", action="store_true")
    parser.add_argument("--no-floor", action="store_true", help="leave out the bare grpc.aio floor")
    parser.add_argument("--no-transport", action="store_true",
                        help="leave out the transport alone (the bare server answering from a cache)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "grid.json")
    args = parser.parse_args(argv)
    variants = {label: shlex.split(flags) for label, _, flags in (v.partition("=") for v in args.variant)}
    results = {"machine": machine_info(), "repeats": args.repeats, "seconds": args.seconds, "variants": variants,
               "models": {}}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        results["models"][model] = measure(model, args.repeats, args.seconds, variants, not args.no_kserve,
                                           not args.no_floor, not args.no_transport)
    results["machine"]["load_average_1m_end"] = machine_info()["load_average_1m"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
