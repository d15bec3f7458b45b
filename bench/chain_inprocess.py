"""In-process ONNX Runtime: the chain of all blocks vs the full graph, CPU provider.

Every session (the full graph and each block) lives in one process, as in the
server. For each session-options configuration and batch size, full and chain runs
alternate (so drift on a shared machine hits both alike) and the report gives the
median time of each and chain/full with its spread (10th-90th percentile of the
per-repeat ratios). Three ways of passing activations between blocks are timed:
numpy arrays through ``session.run`` (what a simple server does), OrtValues through
``run_with_ort_values``, and IO binding into preallocated buffers; the last two
columns are their chain/full ratios.

    python -m bench.chain_inprocess                       # digits_cnn, every configuration
    python -m bench.chain_inprocess --model resnet18_shaped --configs chosen,default

``resnet18_shaped`` (random weights, ResNet-18 layout) is exported and split on
demand into a temporary folder; nothing is written to models/.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from layerserve.export.runtime import CPU_PROVIDERS, session_options
from layerserve.proto.manifest import read_manifest

MODELS = Path(__file__).resolve().parents[1] / "models"

# name -> SessionOptions factory. "chosen" is layerserve.export.runtime.session_options().
CONFIGS: dict[str, Callable[[], ort.SessionOptions]] = {
    "default": ort.SessionOptions,
    "spin-on": lambda: session_options(allow_spinning=True),
    "chosen": session_options,
    "no-spin-parallel": lambda: session_options(sequential=False),
    "no-spin-1-thread": lambda: session_options(intra_op_threads=1),
}


@dataclass(frozen=True)
class Timing:
    config: str
    batch: int
    full_ms: float
    chain_ms: float
    chain_ortvalue_ms: float
    chain_iobinding_ms: float
    ratio: float
    ratio_p10: float
    ratio_p90: float


def _repository(model: str, workdir: Path) -> Path:
    if (MODELS / model / "1" / "manifest.json").is_file():
        return MODELS / model / "1"
    import onnx

    from layerserve.export.architectures import architecture
    from layerserve.export.imported import split_to_repository
    from layerserve.export.onnx_export import export_onnx
    from layerserve.export.train import seed_everything

    arch = architecture(model)
    seed_everything(0)
    source = workdir / f"{model}.onnx"
    onnx.save(export_onnx(arch.build(), arch.input_shape), str(source))
    split_to_repository(source, workdir / model)
    return workdir / model / "1"


def measure(folder: Path, config: str, batches: list[int], repeats: dict[int, int]) -> list[Timing]:
    """Time the full graph and the chain of blocks of the repository at ``folder`` under ``config``."""
    manifest = read_manifest(folder)
    make = CONFIGS[config]
    full = ort.InferenceSession(str(folder / manifest.full_model.path), make(), providers=CPU_PROVIDERS)
    blocks = [
        (ort.InferenceSession(str(folder / b.file.path), make(), providers=CPU_PROVIDERS), b.inputs[0].name)
        for b in manifest.blocks
    ]
    input_name = manifest.inputs[0].name
    shape = list(manifest.inputs[0].shape[1:])
    results = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal([batch, *shape]).astype(np.float32)

        def run_full(x: np.ndarray = x) -> None:
            full.run(None, {input_name: x})

        def run_chain(x: np.ndarray = x) -> None:
            current = x
            for session, name in blocks:
                (current,) = session.run(None, {name: current})

        def run_chain_ortvalues(x: np.ndarray = x) -> None:
            # OrtValues stay ORT's own buffers between blocks: no numpy round trip per boundary.
            current = ort.OrtValue.ortvalue_from_numpy(x)
            for session, name in blocks:
                (current,) = session.run_with_ort_values(None, {name: current})
            current.numpy()

        # IO binding: each block writes straight into a preallocated buffer the next block reads.
        bindings = []
        previous = x
        for (session, name), block in zip(blocks, manifest.blocks, strict=True):
            buffer = np.empty([batch, *block.outputs[0].shape[1:]], np.float32)
            binding = session.io_binding()
            binding.bind_input(name, "cpu", 0, np.float32, list(previous.shape), previous.ctypes.data)
            binding.bind_output(block.outputs[0].name, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
            bindings.append((session, binding, buffer))
            previous = buffer

        def run_chain_iobinding(bindings: list = bindings) -> None:
            for session, binding, _ in bindings:
                session.run_with_iobinding(binding)

        for _ in range(3):
            run_full()
            run_chain()
            run_chain_ortvalues()
            run_chain_iobinding()
        (expected,) = full.run(None, {input_name: x})
        assert float(np.max(np.abs(bindings[-1][2] - expected))) <= 1e-5, "IO-bound chain disagrees with the full graph"
        full_times, chain_times, ov_times, io_times = [], [], [], []
        runs = (
            (run_full, full_times),
            (run_chain, chain_times),
            (run_chain_ortvalues, ov_times),
            (run_chain_iobinding, io_times),
        )
        for _ in range(repeats[batch]):
            for runner, into in runs:
                start = time.perf_counter()
                runner()
                into.append(time.perf_counter() - start)
        ratios = sorted(c / f for c, f in zip(chain_times, full_times, strict=True))
        decile = max(len(ratios) // 10, 0)
        results.append(
            Timing(
                config=config,
                batch=batch,
                full_ms=statistics.median(full_times) * 1e3,
                chain_ms=statistics.median(chain_times) * 1e3,
                chain_ortvalue_ms=statistics.median(ov_times) * 1e3,
                chain_iobinding_ms=statistics.median(io_times) * 1e3,
                ratio=statistics.median(chain_times) / statistics.median(full_times),
                ratio_p10=ratios[decile],
                ratio_p90=ratios[-1 - decile],
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_cnn", help="a models/ repository name or resnet18_shaped")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--repeats", default="200,30", help="repeats per batch size, in --batches order")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    repeats = dict(zip(batches, (int(r) for r in args.repeats.split(",")), strict=True))
    with tempfile.TemporaryDirectory() as workdir:
        folder = _repository(args.model, Path(workdir))
        blocks = len(read_manifest(folder).blocks)
        print(f"{args.model}: {blocks} blocks, onnxruntime {ort.__version__}, CPU provider")
        print(f"{'config':<18}{'batch':>6}{'full ms':>10}{'chain ms':>10}{'chain/full':>12}{'p10-p90':>12}{'OrtValue':>10}{'IOBinding':>11}")
        for config in args.configs.split(","):
            for t in measure(folder, config, batches, repeats):
                spread = f"{t.ratio_p10:.2f}-{t.ratio_p90:.2f}"
                print(f"{t.config:<18}{t.batch:>6}{t.full_ms:>10.3f}{t.chain_ms:>10.3f}{t.ratio:>12.2f}{spread:>12}{t.chain_ortvalue_ms / t.full_ms:>10.2f}{t.chain_iobinding_ms / t.full_ms:>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
