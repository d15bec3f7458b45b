"""``make gpu-check``: prove the CUDA execution provider end to end and time it, as one JSON report.

On a machine with onnxruntime-gpu this

1. starts ``layerserve serve --device cuda`` (which itself refuses to start if any
   session falls back to the CPU) and reads, through ``ListBlocks``, the providers
   every model's sessions really use — a CPU-only list is a failure, never a pass;
2. checks parity on each model's held-out samples: in-process ONNX Runtime on the
   CPU vs the served full graph and server chain on CUDA (max |logit diff| <= 1e-3 of
   max(1, max |logit|): ONNX Runtime's CUDA provider computes convolutions in TF32 by
   default, as PyTorch does, which moves logits by ~1e-4 of their size;
   identical top-1);
3. times, in process, the full graph vs the chain with intermediates kept on the
   device (IOBinding) vs the chain copying every activation through the host, at
   batch 1, 64 and 256;
4. measures served throughput at batch 1 (16 clients) and batch 64 (4 clients) with the
   defaults (dynamic batching on, ``--workers auto``), with dynamic batching off, with
   one worker process, and on the CPU provider of the same machine, server by server.

A model without held-out samples (a foreign or random-weight one) is checked on seeded
random inputs instead.

``--device cpu`` runs the same code paths on the CPU provider (what CI and machines
without a GPU can check); the report then says ``"cuda": false``.

    python -m bench.gpu_check [--device cuda|cpu] [--models models] [--extra-models DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np

from bench.loadgen import run_load
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto import layerserve_pb2, layerserve_pb2_grpc, names, tensors
from layerserve.proto.manifest import iter_repository, read_manifest
from layerserve.server import runtime
from layerserve.server.launcher import ServerProcess
from layerserve.server.settings import usable_cores

# Relative to max(1, max |expected logit|): TF32 convolutions (the CUDA provider's default) differ
# from the CPU's FP32 by ~1e-4 of the logits' size (measured on an H200: docs/BENCHMARKS.md).
PARITY_TOLERANCE = 1e-3
CUDA = runtime.CUDA


def gpu_name() -> str:
    """The GPU's name from nvidia-smi, or '' where there is none."""
    if shutil.which("nvidia-smi") is None:
        return ""
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else ""


def prepare_onnxruntime() -> dict[str, object]:
    """Load the CUDA libraries onnxruntime-gpu needs (``preload_dlls``) and say what the build offers."""
    import onnxruntime as ort

    preloaded = False
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
            preloaded = True
        except Exception as error:  # noqa: BLE001 - reported, not fatal: sessions prove what loads
            print(f"preload_dlls failed: {error}", file=sys.stderr)
    return {"version": ort.__version__, "available_providers": ort.get_available_providers(), "preloaded": preloaded}


def _median_ms(run: Callable[[], object], repeats: int) -> dict[str, float]:
    run()  # warm-up (CUDA kernels, allocator)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples)}


def chain_timings(version_dir: Path, device: str, batches: list[int], repeats: int) -> dict[str, object]:
    """Full graph vs device-resident chain vs host-copy chain, in process, per batch size."""
    manifest = read_manifest(version_dir)
    options = runtime.RuntimeOptions(device=device)
    full = runtime.Graph(version_dir / manifest.full_model.path, options)
    blocks = [runtime.Graph(version_dir / block.file.path, options) for block in manifest.blocks]
    input_spec = full.inputs[0]
    rows: dict[str, object] = {}
    for batch in batches:
        shape = [batch if d < 0 else d for d in input_spec.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        feeds = {input_spec.name: x}
        block_feeds = {blocks[0].inputs[0].name: x}

        def host_chain(feeds: dict[str, np.ndarray] = block_feeds) -> dict[str, np.ndarray]:
            values = dict(feeds)
            for graph in blocks:
                values = graph.run({spec.name: values[spec.name] for spec in graph.inputs})
            return values

        full_t = _median_ms(lambda feeds=feeds: full.run(feeds), repeats)
        device_t = _median_ms(lambda feeds=block_feeds: runtime.chain(blocks, feeds), repeats)
        host_t = _median_ms(host_chain, repeats)
        rows[str(batch)] = {
            "full": full_t,
            "chain_device_resident": device_t,
            "chain_host_copies": host_t,
            "device_chain_over_full": device_t["median_ms"] / full_t["median_ms"],
            "host_chain_over_full": host_t["median_ms"] / full_t["median_ms"],
        }
    return {"providers": full.providers, "on_cuda": (full.value_device or ("cpu", 0))[0] == "cuda", "batches": rows}


def _infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str, name: str, x: np.ndarray) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model)
    tensors.add_raw_input(request, name, x)
    response = stub.ModelInfer(request, timeout=120)
    return tensors.decode_output(response, 0)


def served_checks(address: str, version_dir: Path, batch: int = 64) -> dict[str, object]:
    """Providers reported by ListBlocks, and CPU-in-process vs served parity on the held-out samples."""
    manifest = read_manifest(version_dir)
    reference = runtime.Graph(version_dir / manifest.full_model.path, runtime.RuntimeOptions(device="cpu"))
    input_name = reference.inputs[0].name
    if manifest.HasField("samples"):
        images = np.load(version_dir / manifest.samples.file.path)["images"].astype(np.float32)
    else:  # no held-out samples: seeded random rows, the same on both sides
        shape = [2 * batch if d < 0 else d for d in reference.inputs[0].shape]
        images = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = np.concatenate(
        [reference.run({input_name: images[i : i + batch]})[reference.outputs[0].name] for i in range(0, len(images), batch)]
    )
    result: dict[str, object] = {}
    with grpc.insecure_channel(address) as channel:
        listing = layerserve_pb2_grpc.LayerServiceStub(channel).ListBlocks(
            layerserve_pb2.ListBlocksRequest(model_name=manifest.name), timeout=30
        )
        result["providers"] = list(listing.providers)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for served in (manifest.name, names.chain_name(manifest.name)):
            got = np.concatenate([_infer(stub, served, input_name, images[i : i + batch]) for i in range(0, len(images), batch)])
            result[served] = {
                "samples": len(images),
                "max_abs_logit_diff": float(np.max(np.abs(got - expected))),
                "max_rel_logit_diff": float(np.max(np.abs(got - expected)) / max(1.0, float(np.max(np.abs(expected))))),
                "top1_identical": bool(np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))),
            }
    return result


def served_throughput(address: str, version_dir: Path, duration: float) -> dict[str, object]:
    """Closed-loop throughput of the full graph at batch 1 (16 clients) and batch 64 (4 clients)."""
    manifest = read_manifest(version_dir)
    spec = manifest.inputs[0]
    rows = {}
    for batch, clients in ((1, 16), (64, 4)):
        shape = [batch if d < 0 else int(d) for d in spec.shape]
        request = pb.ModelInferRequest(model_name=manifest.name)
        tensors.add_raw_input(request, spec.name, np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        result = run_load(address, request.SerializeToString(), clients, duration=duration,
                          warmup=min(0.5, duration), channels=clients)
        rows[f"batch{batch}_c{clients}"] = {
            "requests_per_s": result.throughput,
            "samples_per_s": result.throughput * batch,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "errors": result.errors,
        }
    return rows


def server_variants(device: str) -> list[tuple[str, list[str]]]:
    """The servers whose throughput is compared, one after another: the defaults on ``device`` first
    (its parity is checked), then dynamic batching off, one worker process, and the CPU provider."""
    on = ["--device", device]
    variants = [(device, on), (f"{device}_batching_off", [*on, "--dynamic-batching", "false"]),
                (f"{device}_one_worker", [*on, "--workers", "1"])]
    return variants + ([("cpu", ["--device", "cpu"])] if device != "cpu" else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--extra-models", type=Path, help="another repository (e.g. the ResNet-18-shaped bench model)")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per served-throughput cell")
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu_check.json"))
    args = parser.parse_args(argv)

    report: dict[str, object] = {
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "device": args.device,
        "gpu": gpu_name(),
        "host": platform.node(),
        "python": platform.python_version(),
        "usable_cores": usable_cores(),
        "onnxruntime": prepare_onnxruntime(),
    }
    repositories = [args.models] + ([args.extra_models] if args.extra_models else [])
    versions = [(name, path) for root in repositories for name, path in iter_repository(root)]
    batches = [int(b) for b in args.batches.split(",")]
    failures: list[str] = []

    report["chain_timings"] = {name: chain_timings(path, args.device, batches, args.repeats) for name, path in versions}
    models: dict[str, object] = {}
    throughput: dict[str, dict[str, object]] = {name: {} for name, _ in versions}
    for root in repositories:
        for variant, flags in server_variants(args.device):
            with ServerProcess(root, extra_args=[*flags, "--metrics-port", "-1"], ready_timeout=300) as server:
                for name, path in iter_repository(root):
                    if variant == args.device:
                        models[name] = served_checks(server.address, path)
                    throughput[name][variant] = served_throughput(server.address, path, args.duration)
    report["served"] = models
    report["served_throughput"] = throughput

    for name, checks in models.items():
        providers = checks["providers"]  # type: ignore[index]
        if args.device == "cuda" and CUDA not in providers:
            failures.append(f"{name}: sessions report {providers}, not {CUDA} (silent CPU fallback)")
        for served, parity in checks.items():  # type: ignore[union-attr]
            if served == "providers":
                continue
            if parity["max_rel_logit_diff"] > PARITY_TOLERANCE or not parity["top1_identical"]:
                failures.append(f"{served}: parity {parity}")
    report["cuda"] = args.device == "cuda" and not failures
    report["failures"] = failures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"gpu": report["gpu"], "cuda": report["cuda"], "failures": failures}, indent=2))
    print(f"report: {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
