"""Bring-your-own-CNN benchmark: a ResNet-50-shaped model exported both ways users export it.

    python -m bench.foreign                      # 3 interleaved repeats (~10 min on 2 cores)
    python -m bench.foreign --repeats 1 --seconds 5

Measures, for ``resnet50_shaped`` (ResNet-50's layout, 3x224x224, 25.6M parameters, random weights):

* **split time**: ``layerserve split FILE --out DIR`` with no flag, as a subprocess (imports, loading,
  batch resolution, typing, splitting, the chain check at 1 and 2 rows, writing), for the dynamo export
  (dynamic batch) and the TorchScript export (``torch.onnx.export(model, x, path)``: fixed batch 1,
  made dynamic by the split);
* **served / in-process**: images per second of ``layerserve serve`` with its defaults (every flag
  left alone) over the split repository, driven by bench.loadgen with 1 and 2 independent clients
  (the default server runs one worker per core), against ONNX Runtime in this process as a user runs
  it (``InferenceSession(path)``, default options: every core), at batch 1 and 16.

Cells are interleaved across repeats; the report gives median and min-max. The load generator shares
the two cores with the server; its CPU share is recorded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.loadgen import run_load
from bench.machine import machine_info
from bench.payloads import infer_request

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "bench" / "out" / "foreign"
MODEL = "resnet50_shaped"
EXPORTS = ("dynamo", "torchscript")
BATCHES = (1, 16)
CLIENTS = (1, 2)


def log(message: str) -> None:
    print(message, flush=True)


def export(model_name: str, how: str, path: Path) -> float:
    """Write architecture ``model_name`` (random weights) exported ``how`` to ``path``; returns the export's seconds."""
    import contextlib
    import io
    import warnings

    import onnx
    import torch

    from layerserve.export.architectures import architecture
    from layerserve.export.onnx_export import export_onnx
    from layerserve.export.train import seed_everything

    arch = architecture(model_name)
    seed_everything(0)
    model = arch.build().eval()
    began = time.perf_counter()
    if how == "dynamo":
        onnx.save(export_onnx(model, arch.input_shape), str(path))
    else:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.randn(1, *arch.input_shape), str(path), dynamo=False)
    return time.perf_counter() - began


def split_seconds(source: Path, out: Path) -> float:
    """Wall seconds of ``layerserve split SOURCE --out OUT`` as a user runs it."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "layerserve.cli.main", "split", str(source), "--out", str(out)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"split failed: {done.stderr.strip()}")
    return seconds


def _images(shape: tuple[int, ...], batch: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)


def inprocess_images_per_s(model_path: Path, shape: tuple[int, ...], batch: int, seconds: float) -> float:
    """ONNX Runtime as a user runs it: ``InferenceSession(path)`` with default options, one call at a time."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = _images(shape, batch)
    session.run(None, {name: x})
    runs, began = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - began < seconds:
        session.run(None, {name: x})
        runs += 1
    return runs * batch / (time.perf_counter() - began)


def served_cell(address: str, model: str, shape: tuple[int, ...], batch: int, clients: int,
                seconds: float) -> dict[str, float]:
    """Closed-loop load with ``clients`` independent connections, one request in flight each."""
    payload = infer_request(model, {"x": _images(shape, batch)}).SerializeToString()
    result = run_load(address, payload, clients, duration=seconds, warmup=min(2.0, seconds / 4))
    return {
        "images_per_s": result.throughput * batch,
        "p50_ms": result.p50_ms,
        "errors": result.errors,
        "client_core_share": result.client_cpu_s / result.seconds if result.seconds else 0.0,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help=f"a built-in architecture (default {MODEL})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per throughput cell")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    from layerserve.export.architectures import architecture
    from layerserve.server.launcher import ServerProcess

    model = args.model
    shape = architecture(model).input_shape
    args.out.mkdir(parents=True, exist_ok=True)
    sources = {how: args.out / f"{model}_{how}.onnx" for how in EXPORTS}
    export_s = {how: export(model, how, path) for how, path in sources.items()}
    log(f"exported: {', '.join(f'{how} {s:.1f} s' for how, s in export_s.items())}")
    splits: dict[str, list[float]] = {how: [] for how in EXPORTS}
    cells: dict[str, list[float]] = {}
    notes: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        for how, source in sources.items():
            seconds = split_seconds(source, args.out / "models" / how / model)
            splits[how].append(seconds)
            log(f"[{repeat + 1}/{args.repeats}] split {how}: {seconds:.1f} s")
        root = args.out / "models" / "dynamo"
        for batch in BATCHES:
            key = f"inprocess_b{batch}"
            full = root / model / "1" / "model.onnx"
            cells.setdefault(key, []).append(inprocess_images_per_s(full, shape, batch, args.seconds))
            log(f"  in-process batch {batch}: {cells[key][-1]:.1f} img/s")
        log_path = args.out / f"server-{repeat}.log"
        with ServerProcess(root, extra_args=["--metrics-port", "-1", "--log-format", "text"],
                           log_path=log_path, ready_timeout=300) as server:
            for batch in BATCHES:
                for clients in CLIENTS:
                    cell = served_cell(server.address, model, shape, batch, clients, args.seconds)
                    key = f"served_b{batch}_c{clients}"
                    cells.setdefault(key, []).append(cell["images_per_s"])
                    notes.setdefault(key, []).append(f"p50 {cell['p50_ms']:.0f} ms, errors {cell['errors']}, "
                                                     f"client {cell['client_core_share']:.0%} of a core")
                    log(f"  served batch {batch}, {clients} client(s): {cell['images_per_s']:.1f} img/s ({notes[key][-1]})")
    ratios = {
        f"b{batch}_c{clients}": [s / i for s, i in zip(cells[f"served_b{batch}_c{clients}"], cells[f"inprocess_b{batch}"],
                                                       strict=True)]
        for batch in BATCHES for clients in CLIENTS
    }
    from layerserve.proto.manifest import read_manifest

    manifests = {how: read_manifest(args.out / "models" / how / model / "1") for how in EXPORTS}
    report = {
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
        "model": model,
        "export_s": export_s,
        "split_s": {how: summary(values) for how, values in splits.items()},
        "blocks": {how: [b.name for b in m.blocks] for how, m in manifests.items()},
        "notes": {how: list(m.provenance.notes) for how, m in manifests.items()},
        "chain_max_rel_diff": {how: m.provenance.chain_max_rel_diff for how, m in manifests.items()},
        "images_per_s": {key: summary(values) for key, values in cells.items()},
        "served_over_inprocess": {key: summary(values) for key, values in ratios.items()},
        "served_notes": notes,
        "raw": {"split_s": splits, "images_per_s": cells},
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    log(json.dumps({k: report[k] for k in ("split_s", "served_over_inprocess", "images_per_s")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
