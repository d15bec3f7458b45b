"""``layerserve train | export | split``: export's subcommands (torch and onnx imported in handlers only).

Refusals (ExportError) print one line, ``layerserve <command>: <what is wrong and what to do>``,
and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from layerserve.proto.repository_pb2 import ModelManifest


def _depth(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a depth of 1 or more, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a depth of 1 or more, got {value}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected the per-sample shape like 3,224,224, got {text!r}") from None


def _add_image_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing recorded in the manifest (layerserve compare --images applies it)")
    group.add_argument("--resize", type=int, help="shorter side before the centre crop, 0 to resize straight to the "
                       "input's size (default: crop/0.875 for RGB, the crop for grey; Keras and Ultralytics graphs: "
                       "docs/bring-your-own-cnn.md)")
    group.add_argument("--mean", help="per-channel mean of [0,1] pixels (default: ImageNet's for RGB, 0 for grey; "
                       "0 for Keras and Ultralytics graphs)")
    group.add_argument("--std", help="per-channel std (default: ImageNet's for RGB, 1 for grey; 1 for Keras and "
                       "Ultralytics graphs, 1/255 for a graph that scales its input by 1/255 itself)")
    group.add_argument("--labels", help="class names: a text file with one per line, or a comma-separated list")


def _add_depth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=_depth, default=None, metavar="auto|N",
                        help="module depth of a block: 1 = top-level modules (layer1), 2 = one level finer "
                        "(layer1.0); auto (default) opens containers that hold most of the model (features)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``export`` and ``split`` to the ``layerserve`` parser."""
    train = subparsers.add_parser("train", help="train a built-in model and write its repository (models/NAME/1)")
    train.add_argument("name", help="digits_cnn or digits_resnet")
    train.add_argument("--out", type=Path, default=Path("models"), help="repository root (default: models)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--epochs", type=int, default=None, help="override the default epoch count")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_guarded(_train))

    export = subparsers.add_parser(
        "export",
        help="export your own PyTorch model (--model FILE.py:NAME) to a model repository, or a built-in to ONNX",
        description="With --model: export your nn.Module (a class or a factory, called without arguments) with the "
        "dynamo exporter and a dynamic batch, check parity with PyTorch, split it at its own module tree and write "
        "the model folder --out (version 1 inside). With a built-in NAME: write its untrained ONNX file to --out.",
    )
    export.add_argument("name", nargs="?", help="a built-in architecture: digits_cnn, digits_resnet, resnet18_shaped, "
                        "resnet50_shaped")
    export.add_argument("--model", metavar="FILE.py:NAME", help="your model: FILE.py:NAME or package.module:NAME")
    export.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="per-sample input shape (with --model)")
    export.add_argument("--weights", type=Path, help="state_dict to load (with --model; without it the model is "
                        "seeded and untrained, and the manifest says so)")
    export.add_argument("--out", type=Path, required=True, help="with --model: the model folder to write; "
                        "with NAME: the ONNX file to write")
    export.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    export.add_argument("--onnx", type=Path, help="with --model: also save the exported full graph here")
    export.add_argument("--seed", type=int, default=0)
    _add_depth(export)
    _add_image_flags(export)
    export.set_defaults(handler=_guarded(_export))

    split = subparsers.add_parser("split", help="split an ONNX model into blocks and write a model repository")
    split.add_argument("model", type=Path, help="ONNX file with one image input (with --triton: a Triton repository)")
    split.add_argument("--out", type=Path, help="model folder to write (version 1 goes inside); not with --triton")
    split.add_argument("--triton", action="store_true",
                       help="MODEL is a Triton model repository: split each ONNX Runtime model version it serves, "
                       "writing blocks/ and manifest.json beside its model file (left as it is)")
    split.add_argument("--granularity", choices=("layer", "cut"), default="layer",
                       help="layer: one block per module (see --depth); cut: a block between every two cuts")
    _add_depth(split)
    split.add_argument("--at", default=None, help="comma-separated tensor names to cut at")
    split.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    split.add_argument("--input-shape", type=_shape, default=None, metavar="C,H,W",
                       help="the per-sample input shape to serve, for a graph exported with free height and width "
                       "(dynamic_axes past the batch); must agree with the graph's fixed dimensions")
    split.add_argument("--fixed-batch", action="store_true",
                       help="keep a fixed batch dimension as it is (default: make it dynamic where that provably "
                       "changes no answer)")
    _add_image_flags(split)
    split.set_defaults(handler=_guarded(_split))


def _guarded(handler):
    """Run ``handler``; an ExportError (or an unwritable path) is one line on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from .errors import ExportError

        try:
            return handler(args)
        except ExportError as error:
            print(f"layerserve {args.command}: {error}", file=sys.stderr)
            return 2
        except OSError as error:
            print(f"layerserve {args.command}: {error.strerror or error}: {error.filename or ''}".rstrip(": "),
                  file=sys.stderr)
            return 2

    return run


def _train(args: argparse.Namespace) -> int:
    from layerserve.cli.console import console

    from .builtin import BuildOptions, build
    from .train import TrainConfig

    config = TrainConfig(seed=args.seed) if args.epochs is None else TrainConfig(seed=args.seed, epochs=args.epochs)
    manifest = build(args.name, args.out, BuildOptions(config=config, show_progress=not args.no_progress))
    _print_summary(console(), manifest, args.out / manifest.name / manifest.version)
    return 0


def _labels(text: str | None) -> list[str]:
    if not text:
        return []
    path = Path(text)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def _preprocessing(args: argparse.Namespace, input_shape):
    from .preprocessing import image_preprocessing, parse_floats

    return image_preprocessing(
        input_shape, args.resize, parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")
    )


def _model_name(out: Path, name: str | None) -> str:
    """The model's name: its folder's (``--out``), which ``--name`` may only repeat. The server names each
    model after its folder, so a name that differs (or holds a path: a HuggingFace id such as
    ``microsoft/resnet-50``) would write a folder elsewhere than ``--out``, or outside it."""
    from .errors import ExportError

    folder = Path(out).name
    if name is not None and name != folder:
        raise ExportError(f"--name {name[:80]!r} differs from the --out folder's name {folder!r}: the server names a "
                          f"model after its folder, so write it to --out {Path(out).parent / _folder_like(name)}")
    if folder in ("", ".", "..") or folder.startswith(".") or not folder.isprintable():
        raise ExportError(f"--out {str(out)[:120]!r} does not end in a model folder name (such as models/my_cnn)")
    return folder


def _folder_like(name: str) -> str:
    """``name`` made a folder name: path separators and leading dots become underscores."""
    cleaned = "".join("_" if char in "/\\" or not char.isprintable() else char for char in name).lstrip(".")
    return cleaned[:80] or "my_model"


def _export(args: argparse.Namespace) -> int:
    from .errors import ExportError

    if (args.model is None) == (args.name is None):
        raise ExportError("give either a built-in NAME or --model FILE.py:NAME (see layerserve export --help)")
    if args.model is None:
        return _export_builtin(args)
    if args.input_shape is None:
        raise ExportError("--model needs --input-shape, the per-sample input shape such as 3,224,224")
    from layerserve.cli.console import console

    from .user_model import UserModel, export_user_model

    user = UserModel(args.model, args.input_shape, args.weights, args.seed, _labels(args.labels))
    name = _model_name(args.out, args.name)
    manifest = export_user_model(user, args.out.parent, name, args.depth, _preprocessing(args, args.input_shape),
                                 args.onnx)
    _print_summary(console(), manifest, args.out / manifest.version)
    return 0


def _export_builtin(args: argparse.Namespace) -> int:
    import onnx

    from .architectures import architecture
    from .errors import ExportError
    from .onnx_export import export_onnx
    from .train import seed_everything

    try:
        arch = architecture(args.name)
    except KeyError as error:
        raise ExportError(f"{error.args[0]}; for your own model use --model FILE.py:NAME") from None
    seed_everything(args.seed)
    proto = export_onnx(arch.build(), arch.input_shape)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(args.out))
    print(f"wrote {args.out} ({args.name}, untrained, seed {args.seed})")
    return 0


def _split(args: argparse.Namespace) -> int:
    import time

    from layerserve.cli.console import console

    from .errors import ExportError
    from .imported import SplitOptions, split_to_repository

    at = tuple(name.strip() for name in args.at.split(",") if name.strip()) if args.at else ()
    if args.triton:
        if args.out is not None:
            raise ExportError("--triton writes into the repository it is given; --out does not apply")
        if args.input_shape is not None:
            raise ExportError("--triton splits each model at the shape its config.pbtxt declares; --input-shape "
                              "does not apply")
        return _split_triton(args, SplitOptions(granularity=args.granularity, at=at, depth=args.depth,
                                                make_dynamic=False))
    if args.out is None:
        raise ExportError("--out is required (the model folder to write), unless --triton")
    options = SplitOptions(granularity=args.granularity, at=at, depth=args.depth, make_dynamic=not args.fixed_batch,
                           input_shape=args.input_shape)
    name = _model_name(args.out, args.name)
    began = time.perf_counter()
    manifest = split_to_repository(args.model, args.out, name, options, _preprocessing_for_file(args),
                                   _labels(args.labels))
    _print_summary(console(), manifest, args.out / manifest.version, time.perf_counter() - began,
                   exported="model.onnx vs your file")
    return 0


def _split_triton(args: argparse.Namespace, options) -> int:  # noqa: ANN001 - SplitOptions, imported late
    from .errors import ExportError
    from .imported import split_triton_repository

    if not args.model.is_dir():
        raise ExportError(f"--triton expects a Triton model repository folder, got {args.model}")
    done = split_triton_repository(args.model, options)
    if not done:
        raise ExportError(f"{args.model} holds no Triton model (no <model>/config.pbtxt)")
    for model, version, manifest, note in done:
        if manifest is None:
            print(f"{model}: skipped: {note}")
        else:
            print(f"{model} version {version}: {note} ({', '.join(b.name for b in manifest.blocks)}) "
                  f"-> {args.model / model / version}")
    return 0


def _preprocessing_for_file(args: argparse.Namespace):
    """The preprocessing flags for a file whose input shape the split finds: None when none were given. A flag
    left out takes the exporter's convention where the graph says who made it (export/conventions.py: a Keras
    graph's --mean alone means no torchvision resize or std), else torchvision's default."""
    if args.resize is None and args.mean is None and args.std is None:
        return None
    from .conventions import exporter_defaults
    from .imported import per_sample_shape
    from .model_file import read_model
    from .preprocessing import image_preprocessing, parse_floats

    proto = read_model(args.model)
    shape = per_sample_shape(proto)
    implied = exporter_defaults(proto, shape)
    known = implied.preprocessing if implied is not None else None
    mean, std = parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")
    return image_preprocessing(
        shape,
        args.resize if args.resize is not None or known is None else known.resize,
        mean if mean is not None or known is None else list(known.mean),
        std if std is not None or known is None else list(known.std),
    )


def _print_summary(console: Console, manifest: ModelManifest, folder: Path, seconds: float | None = None,
                   exported: str = "ONNX vs PyTorch") -> None:
    """The blocks table, notes and checks; ``exported`` names what the first max|diff| compares."""
    from rich.table import Table

    from layerserve.proto.pictures import input_layout
    from layerserve.proto.tensors import format_spec

    table = Table(title=f"{manifest.name} v{manifest.version} -> {folder}")
    for column in ("block", "input", "output", "params", "MFLOPs", "out bytes/sample"):
        table.add_column(column)
    def listed(specs) -> str:  # every tensor, one per line (a last block may give the model's several outputs)
        return "\n".join(f"{spec.name} {format_spec(spec.datatype, spec.shape)}" for spec in specs)

    for block in manifest.blocks:
        table.add_row(
            block.name,
            listed(block.inputs),
            listed(block.outputs),
            f"{block.parameters:,}",
            f"{block.flops / 1e6:.2f}",
            f"{block.output_bytes_per_sample:,}",
        )
    console.print(table)
    p = manifest.provenance
    if p.heldout_samples:
        console.print(f"held-out accuracy {p.heldout_accuracy:.4f} on {p.heldout_samples} samples (ONNX)")
    if p.weights:
        console.print(f"weights: {p.weights}")
    for note in p.notes:
        console.print(f"note: {note}")
    if manifest.inputs and input_layout(manifest.inputs[0].shape) is not None:  # an input pictures fill
        from .preprocessing import describe

        console.print(f"preprocessing: {describe(manifest.preprocessing, manifest.inputs[0].datatype)}")
    console.print(
        f"{exported} max|diff| {p.export_max_abs_diff:.2g}, chain max|diff| {p.chain_max_abs_diff:.2g} "
        f"({p.chain_max_rel_diff:.2g} of the output's scale)"
        + (f", {seconds:.1f} s" if seconds is not None else "")
    )
