"""``layerserve train | export | split``: export's subcommands (torch and onnx imported in handlers only)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from layerserve.proto.repository_pb2 import ModelManifest


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``export`` and ``split`` to the ``layerserve`` parser."""
    train = subparsers.add_parser("train", help="train a built-in model and write its repository (models/NAME/1)")
    train.add_argument("name", help="digits_cnn or digits_resnet")
    train.add_argument("--out", type=Path, default=Path("models"), help="repository root (default: models)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--epochs", type=int, default=None, help="override the default epoch count")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    export = subparsers.add_parser("export", help="export a built-in architecture (untrained, seeded) to ONNX")
    export.add_argument("name", help="digits_cnn, digits_resnet or resnet18_shaped")
    export.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    export.add_argument("--seed", type=int, default=0)
    export.set_defaults(handler=_export)

    split = subparsers.add_parser("split", help="split an ONNX model into blocks and write a model repository")
    split.add_argument("model", type=Path, help="ONNX file with one image input")
    split.add_argument("--out", type=Path, required=True, help="model folder to write (version 1 goes inside)")
    split.add_argument("--granularity", choices=("layer", "cut"), default="layer")
    split.add_argument("--at", default=None, help="comma-separated tensor names to cut at")
    split.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    split.add_argument("--check-batch", type=int, default=2, help="random inputs for the chain check")
    split.set_defaults(handler=_split)


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .builtin import BuildOptions, build
    from .train import TrainConfig

    config = TrainConfig(seed=args.seed) if args.epochs is None else TrainConfig(seed=args.seed, epochs=args.epochs)
    manifest = build(args.name, args.out, BuildOptions(config=config, show_progress=not args.no_progress))
    _print_summary(Console(), manifest, args.out / manifest.name / manifest.version)
    return 0


def _export(args: argparse.Namespace) -> int:
    import onnx

    from .architectures import architecture
    from .onnx_export import export_onnx
    from .train import seed_everything

    arch = architecture(args.name)
    seed_everything(args.seed)
    proto = export_onnx(arch.build(), arch.input_shape)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(args.out))
    print(f"wrote {args.out} ({args.name}, untrained, seed {args.seed})")
    return 0


def _split(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .graph import SplitError
    from .imported import split_to_repository

    console = Console()
    at = [name.strip() for name in args.at.split(",") if name.strip()] if args.at else None
    try:
        manifest = split_to_repository(args.model, args.out, args.name, args.granularity, at, args.check_batch)
    except SplitError as error:
        print(f"split refused: {error}", file=sys.stderr)
        return 2
    _print_summary(console, manifest, args.out / manifest.version)
    return 0


def _print_summary(console: Console, manifest: ModelManifest, folder: Path) -> None:
    from rich.table import Table

    from layerserve.proto.tensors import format_spec

    table = Table(title=f"{manifest.name} v{manifest.version} -> {folder}")
    for column in ("block", "input", "output", "params", "MFLOPs", "out bytes/sample"):
        table.add_column(column)
    for block in manifest.blocks:
        table.add_row(
            block.name,
            f"{block.inputs[0].name} {format_spec(block.inputs[0].datatype, block.inputs[0].shape)}",
            f"{block.outputs[0].name} {format_spec(block.outputs[0].datatype, block.outputs[0].shape)}",
            f"{block.parameters:,}",
            f"{block.flops / 1e6:.2f}",
            f"{block.output_bytes_per_sample:,}",
        )
    console.print(table)
    p = manifest.provenance
    if p.heldout_samples:
        console.print(f"held-out accuracy {p.heldout_accuracy:.4f} on {p.heldout_samples} samples (ONNX)")
    console.print(f"export max|diff| {p.export_max_abs_diff:.2g}, chain max|diff| {p.chain_max_abs_diff:.2g}")
