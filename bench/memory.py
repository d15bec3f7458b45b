"""Memory: what a model adds to ``layerserve serve`` (defaults) against one plain ONNX Runtime process.

    python -m bench.memory                               # resnet50_shaped (built by bench.payloads)
    python -m bench.memory --models models --model digits_cnn

Measured as PSS (proportional set size: a page shared by several processes counts by its
share, so a weight file the workers map together counts once), summed over the server's
processes (the parent and its workers):

* **ORT adds**: a Python process holding ``onnxruntime.InferenceSession(model.onnx)`` (default
  options) after one run, minus the same process holding an empty graph;
* **server adds**: ``layerserve serve`` with every default over the model's repository, after one
  request to the full graph, each block and the chain, minus the same server over an empty
  repository: 2 s after those requests, and again ``settle_s`` later, once the workers' memory
  janitor has given an idle worker's freed heap back (the server's steady idle state; the ORT
  process keeps its arena, so its figure has no such second reading);
* **under load**: the peak while the grid runs (batch 1 with 16 clients, batch 64 with 4, the chain
  with every activation kept), sampled every 0.2 s, and the value 15 s after the load stopped.

The goal (issue 12): server adds <= 1.3 x ORT adds, and back within 20 % of idle after the load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import run_load
from bench.machine import machine_info, pss_kib, tree_pids, tree_pss_kib
from bench.payloads import infer_request, model_root
from layerserve.proto import names
from layerserve.proto.manifest import read_manifest, version_folders
from layerserve.server.launcher import ServerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
SETTLE_S = 15.0

_HOLD = textwrap.dedent("""
    import sys, time, numpy as np, onnxruntime as ort
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in spec.shape]
    session.run(None, {spec.name: np.zeros(shape, np.float32)})
    print("ready", flush=True)
    time.sleep(600)
""")


def _empty_graph(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def ort_pss_mib(model: Path) -> float:
    """PSS of a plain ONNX Runtime process holding ``model`` after one run, in MiB."""
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(model)], stdout=subprocess.PIPE, text=True)
    try:
        process.stdout.readline()
        time.sleep(1.0)
        return tree_pss_kib(process.pid) / 1024
    finally:
        process.kill()
        process.wait()


def _requests(models: Path, model: str, batch: int, keep_all: bool = False) -> dict[str, bytes]:
    """Serialized requests for the full graph, each block and the chain of ``model``, ``batch`` rows."""
    from layerserve.proto import layerserve_pb2 as lpb
    from layerserve.proto import tensors

    manifest = read_manifest(version_folders(models / model)[-1])
    rng = np.random.default_rng(0)

    def rows(spec) -> np.ndarray:
        return rng.standard_normal((batch, *[int(d) for d in spec.shape[1:]])).astype(np.float32)

    found = {model: infer_request(model, {manifest.inputs[0].name: rows(manifest.inputs[0])}).SerializeToString()}
    for block in manifest.blocks:
        served = names.block_name(model, block.name)
        found[served] = infer_request(served, {block.inputs[0].name: rows(block.inputs[0])}).SerializeToString()
    chain = names.chain_name(model)
    found[chain] = infer_request(chain, {manifest.inputs[0].name: rows(manifest.inputs[0])}).SerializeToString()
    if keep_all:
        request = lpb.ChainRequest(model_name=model, keep=range(len(manifest.blocks)))
        request.request.model_name = chain
        tensors.add_raw_input(request.request, manifest.inputs[0].name, rows(manifest.inputs[0]))
        found["chain keep all"] = request.SerializeToString()
    return found


def _touch(address: str, requests: dict[str, bytes]) -> None:
    for payload in requests.values():
        run_load(address, payload, 1, duration=0.0, warmup=0.0)


def server_pss_mib(models: Path, model: str | None, seconds: float, settle_s: float = SETTLE_S) -> dict[str, Any]:
    """Idle, peak-under-load and settled PSS of a default server over ``models``, in MiB."""
    with tempfile.TemporaryDirectory() as log_dir, ServerProcess(
        models, extra_args=["--metrics-port", "-1", "--log-format", "text"],
        log_path=Path(log_dir) / "server.log", ready_timeout=300,
    ) as server:
        pid = server.process.pid
        if model is None:
            time.sleep(2.0)
            return {"idle": tree_pss_kib(pid) / 1024}
        _touch(server.address, _requests(models, model, 1))
        time.sleep(2.0)
        idle = tree_pss_kib(pid) / 1024
        time.sleep(settle_s)  # the janitor gives an idle worker's freed heap back after 1 s idle
        idle_trimmed = tree_pss_kib(pid) / 1024
        peak = [idle]
        running = True

        def sample() -> None:
            while running:
                peak.append(tree_pss_kib(pid) / 1024)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            one = _requests(models, model, 1)
            run_load(server.address, one[model], 16, duration=seconds, warmup=0.5)
            run_load(server.address, _requests(models, model, 64)[model], 4, duration=seconds, warmup=0.5)
            keep = _requests(models, model, 8, keep_all=True)["chain keep all"]
            run_load(server.address, keep, 2, duration=seconds, warmup=0.5, method="/layerserve.v1.LayerService/Chain")
        finally:
            running = False
            sampler.join()
        time.sleep(settle_s)
        settled = {str(process): pss_kib(process) / 1024 for process in tree_pids(pid)}
        # What to look at when the settled reading is high: each process's share, and every trim the
        # janitor logged (when, idle or not, how much it gave back).
        trims = [line for line in (Path(log_dir) / "server.log").read_text(errors="replace").splitlines()
                 if "gave free memory back" in line]
        return {"idle": idle, "idle_trimmed": idle_trimmed, "peak": max(peak), "settled": sum(settled.values()),
                "settled_by_process": settled, "janitor_trims": trims[-40:]}


def measure(models: Path, model: str, seconds: float, settle_s: float = SETTLE_S) -> dict:
    """The memory row for ``model`` in the repository ``models`` (module docstring)."""
    full = version_folders(models / model)[-1] / "model.onnx"
    with tempfile.TemporaryDirectory() as scratch:
        empty_graph = _empty_graph(Path(scratch) / "empty.onnx")
        (Path(scratch) / "repo").mkdir()
        ort_empty = ort_pss_mib(empty_graph)
        ort_model = ort_pss_mib(full)
        server_empty = server_pss_mib(Path(scratch) / "repo", None, seconds)["idle"]
        # The server holds this model alone: every model it serves is checked at load (server/chains.py runs
        # a probe through each chain), so another model in the same folder would count as this one's.
        alone = Path(scratch) / "alone"
        alone.mkdir()
        (alone / model).symlink_to((models / model).resolve(), target_is_directory=True)
        server = server_pss_mib(alone, model, seconds, settle_s)
    ort_adds = ort_model - ort_empty
    server_adds = server["idle"] - server_empty
    return {
        "machine": machine_info(),
        "model": model,
        "settle_s": settle_s,
        "ort_process_mib": {"empty": ort_empty, "model": ort_model, "adds": ort_adds},
        "server_mib": {"empty": server_empty, **server, "adds": server_adds},
        "server_over_ort": server_adds / ort_adds,
        "server_over_ort_trimmed": (server["idle_trimmed"] - server_empty) / ort_adds,
        "settled_over_idle": server["settled"] / server["idle"],
        "peak_over_idle": server["peak"] / server["idle"],
    }


def markdown(report: dict) -> str:
    """The memory row as Markdown."""
    ort, server = report["ort_process_mib"], report["server_mib"]
    return (f"### Memory: {report['model']} (PSS, MiB)\n\n"
            "| | empty | with the model | the model adds |\n|---|---|---|---|\n"
            f"| one ONNX Runtime process | {ort['empty']:.0f} | {ort['model']:.0f} | {ort['adds']:.0f} |\n"
            f"| layerserve serve (defaults) | {server['empty']:.0f} | {server['idle']:.0f} | {server['adds']:.0f} |\n\n"
            f"server / ORT: **{report['server_over_ort']:.2f}x** 2 s after the first requests, "
            f"**{report['server_over_ort_trimmed']:.2f}x** once the idle workers gave freed memory back "
            f"({server['idle_trimmed']:.0f} MiB); under the load: peak {server['peak']:.0f} MiB "
            f"({report['peak_over_idle']:.2f}x idle), {report['settle_s']:.0f} s after it {server['settled']:.0f} MiB "
            f"(**{report['settled_over_idle']:.2f}x** idle)\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="repository holding the model (default: the "
                        "committed models, or bench/out/models where bench.payloads builds benchmark models)")
    parser.add_argument("--model", default="resnet50_shaped")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per load cell")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "memory.json")
    args = parser.parse_args(argv)
    report = measure(args.models or model_root(args.model), args.model, args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
