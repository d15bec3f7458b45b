"""``layerserve blocks | infer | chain | compare | plan``: the client's subcommands (plan: client/plan_cli.py).

Every command talks to ``--server`` (default 127.0.0.1:8001), prints rich tables
(or JSON with ``--json``), shows progress on stderr, and exits 1 printing the
server's status and message when an RPC fails (2 for a local usage error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layerserve.proto.repository_pb2 import Quantization

from .connection import DEFAULT_ADDRESS
from .fit import FITS  # numpy only: the adapters' one table gives the CLI its choices

Handler = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``blocks``, ``infer``, ``chain``, ``compare`` and ``plan``."""
    from . import plan_cli

    blocks = _add(subparsers, "blocks", _blocks, "list the served models, or one model's blocks")
    blocks.add_argument("model", nargs="?", help="a model name; without it, list every served model")

    infer = _add(subparsers, "infer", _infer, "run a served model (full, '<model>.<block>' or chain) on an input")
    infer.add_argument("model", help="served model name, e.g. digits_cnn or digits_cnn.00_stem")
    _add_input(infer)

    chain = _add(subparsers, "chain", _chain, "run blocks [start, stop) of a model, in the client or on the server")
    chain.add_argument("model")
    _add_input(chain)
    chain.add_argument("--start", default="0", help="first block (index or name; default 0)")
    chain.add_argument("--stop", type=int, help="one past the last block to run (default: through the head)")
    chain.add_argument("--where", choices=["client", "server"], help="who passes activations on (default client)")
    chain.add_argument("--keep", default="", help="block indices whose outputs to show: '1,3' or 'all'")
    chain.add_argument("--fit", choices=FITS, help="force the input into block start's shape")
    chain.add_argument("--plan", type=Path, metavar="FILE.json", help="run the cut `layerserve plan --json` chose "
                       "(its near and far servers, its encoding; --where defaults to server)")

    compare = _add(subparsers, "compare", _compare, "the experiment: full graph vs chains vs final blocks alone")
    compare.add_argument("model")
    compare.add_argument("--start", help="where the final-only paths start (default: the last conv block)")
    compare.add_argument("--images", type=Path, metavar="DIR", help="your labelled pictures: DIR/<class>/<picture> "
                         "(torchvision's ImageFolder layout), preprocessed as the model's manifest says")
    compare.add_argument("--samples", type=Path, help="labelled .npz (default: the model's samples under --models)")
    compare.add_argument("--models", type=Path, default=Path("models"), help="model repository for the samples")
    compare.add_argument("--limit", type=int, help="use only the first N samples")
    compare.add_argument("--where", choices=["client", "server"], default="client", help="where final-only paths run")
    compare.add_argument("--every", type=int, default=1, help="skip curve step: skip 0, K, 2K, ... blocks")
    compare.add_argument("--matrix-samples", type=int, default=100, help="samples for the skip matrix (0: none)")
    compare.add_argument("--matrix-fit", choices=FITS, default=FITS[0])
    compare.add_argument("--no-curve", action="store_true", help="skip the skip curve")
    compare.add_argument("--seed", type=int, default=0, help="seed of the project adapter")
    compare.add_argument("--report", type=Path, metavar="DIR", help="write an HTML report with pictures to DIR")
    compare.add_argument("--encodings", default="fp16,int8", help="wire encodings whose accuracy cost to measure "
                         "at every cut ('' for none)")
    compare.add_argument("--encoding-rows", type=int, default=1, help="rows per request when measuring encodings "
                         "(INT8's scale spans a request; default 1, as `layerserve plan` sends)")
    plan_cli.register(subparsers, _add)


def _add(subparsers: argparse._SubParsersAction, name: str, handler: Handler, help_text: str,
         server: bool = True) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    group = parser.add_argument_group("connection")
    if server:
        group.add_argument("--server", "-u", "--url", dest="server", default=DEFAULT_ADDRESS,
                           help=f"server address (default {DEFAULT_ADDRESS}); -u/--url as tritonclient's examples spell it")
        group.add_argument("--placement", help="route block ranges to servers: '0-2=HOST:PORT,3-4=HOST:PORT[@int8]'")
    group.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    group.add_argument("--root-certs", type=Path, help="PEM root certificates (implies --tls)")
    group.add_argument("--cert", type=Path, help="client certificate chain, PEM (mutual TLS)")
    group.add_argument("--key", type=Path, help="client private key, PEM (mutual TLS)")
    group.add_argument("--token", default=os.environ.get("LAYERSERVE_TOKEN"), help="bearer token (env LAYERSERVE_TOKEN)")
    group.add_argument("--timeout", type=float, default=60.0, help="seconds per RPC (default 60)")
    group.add_argument("--batch-size", type=int, default=64, help="rows per request (default 64)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(handler=lambda args: _run(handler, args))
    return parser


def _add_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help=".npy/.npz array or a PNG/JPEG image")
    parser.add_argument("--invert", choices=["auto", "yes", "no"], default="auto", help="invert an image file's grey levels")


def _run(handler: Handler, args: argparse.Namespace) -> int:
    from .errors import ServerError
    from .placement import PlacementError

    try:
        return handler(args)
    except ServerError as error:
        print(f"layerserve {args.command}: {error}", file=sys.stderr)
        return 1
    except (PlacementError, ValueError, KeyError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"layerserve {args.command}: {message}", file=sys.stderr)
        return 2


def _settings(args: argparse.Namespace):
    from .connection import ConnectionSettings

    return ConnectionSettings(
        tls=args.tls,
        root_certificates=args.root_certs,
        certificate_chain=args.cert,
        private_key=args.key,
        token=args.token,
        timeout=args.timeout,
    )


def _client(args: argparse.Namespace, address: str | None = None):
    from .api import LayerClient
    from .placement import Placement

    placement = Placement.parse(args.placement) if getattr(args, "placement", None) else None
    return LayerClient(address or args.server, _settings(args), placement, batch_size=args.batch_size)


def _console(stderr: bool = False):
    from layerserve.cli.console import console

    return console(stderr)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=_jsonable))


def _jsonable(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextmanager
def _progress(total: int, description: str, client=None) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr when it is a terminal (never in pipes or logs); yields ``step(label)``.

    With ``client``, the bar also shows the rows of the request under way (its ``on_request`` hook).
    """
    if not sys.stderr.isatty():
        yield lambda label: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[rows]}"))
    with Progress(*columns, console=_console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total, rows="")

        def step(label: str) -> None:
            progress.update(task, advance=1, description=f"{description}: {label}", rows="")

        def rows(served: str, done: int, rows_total: int) -> None:
            progress.update(task, rows=f"{served} {done}/{rows_total} rows")

        if client is not None:
            client.on_request = rows
        try:
            yield step
        finally:
            if client is not None:
                client.on_request = None


# -- blocks ------------------------------------------------------------------------------


def _blocks(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from rich.table import Table

    from .api import TensorSpec

    with _client(args) as client:
        if args.model is None:
            models = client.list_models(ready_only=False)
            if args.json:
                _print_json([{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in models])
                return 0
            table = Table("model", "version", "state", title=f"models served at {args.server}")
            for m in models:
                table.add_row(m.name, m.version, m.state + (f" ({m.reason})" if m.reason else ""))
            _console().print(table)
            return 0
        found = client.blocks(args.model)
    manifest = found.manifest
    if args.json:
        _print_json(
            {
                "manifest": json_format.MessageToDict(manifest, preserving_proto_field_name=True),
                "providers": list(found.providers),
                "full_model_name": found.full_model_name,
                "block_model_names": list(found.block_model_names),
                "chain_model_name": found.chain_model_name,
            }
        )
        return 0

    def specs(items) -> str:
        return ", ".join(str(TensorSpec.from_proto(s)) for s in items)

    table = Table(
        "#", "block", "served as", "input", "output", "params", "MFLOPs", "out bytes/sample", "ops",
        title=f"{manifest.name} v{manifest.version}: {len(found)} blocks on {', '.join(found.providers)}",
        caption=f"full graph: {found.full_model_name}   server chain: {found.chain_model_name}   "
        + (f"held-out accuracy {manifest.provenance.heldout_accuracy:.1%}" if manifest.provenance.heldout_samples
           else manifest.provenance.weights or manifest.description),
    )
    for block, served in zip(manifest.blocks, found.block_model_names, strict=True):
        table.add_row(
            str(block.index), block.name, served, specs(block.inputs), specs(block.outputs),
            f"{block.parameters:,}", f"{block.flops / 1e6:.2f}", f"{block.output_bytes_per_sample:,}",
            " ".join(block.op_types),
        )
    _console().print(table)
    return 0


# -- infer and chain ---------------------------------------------------------------------


def _load(args: argparse.Namespace, spec, preprocessing=None) -> np.ndarray:
    from .images import load_input

    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    return load_input(args.input, spec, invert, preprocessing)


def _preprocessing(client, model: str):
    """The manifest's preprocessing of ``model``'s owner, or None from a server without the extension."""
    from .errors import ServerError

    try:
        return client.blocks(model).manifest.preprocessing
    except ServerError:
        return None


def _describe(name: str, value: np.ndarray) -> list[str]:
    return [name, "x".join(map(str, value.shape)), str(value.dtype), f"{value.min():.4g}", f"{value.max():.4g}",
            f"{value.mean():.4g}"]


def _predictions(outputs: dict[str, np.ndarray], served: Served, title: str, scores: bool = True) -> None:
    """Print top-3 classes per sample when the output looks like logits, else tensor statistics. ``scores``: the
    outputs are the model's own (a chain that stopped early gives activations), so without class names the
    first 2-D output's classes are numbered. An integer output the graph quantized itself is read as its real
    values."""
    from rich.table import Table

    from .experiment import gives_probabilities, probabilities, real_values

    console = _console()
    class_names = served.class_names
    for position, (name, value) in enumerate(outputs.items()):
        quantization = served.quantizations.get(name)
        value = real_values(value, quantization)
        names = class_names
        if scores and not class_names and position == 0 and value.ndim == 2 and value.shape[1] > 1:
            names = [str(index) for index in range(value.shape[1])]  # no labels: the first output, numbered
        if value.ndim == 2 and value.shape[1] == len(names) and len(value) <= 64:
            table = Table("sample", "top-1", "p", "top-3", title=f"{title}: {name} {list(value.shape)}")
            for row, p in enumerate(probabilities(value, gives_probabilities(value, quantization))):
                order = np.argsort(p)[::-1][:3]
                table.add_row(str(row), names[order[0]], f"{p[order[0]]:.1%}",
                              "  ".join(f"{names[k]} {p[k]:.1%}" for k in order))
            console.print(table)
        else:
            table = Table("tensor", "shape", "dtype", "min", "max", "mean", title=title)
            table.add_row(*_describe(name, value))
            console.print(table)


@dataclass(frozen=True)
class Served:
    """What the manifest of the model serving a name says about its answers: class names, and the
    quantization of the integer outputs its graphs quantized themselves, by tensor name."""

    class_names: list[str] = field(default_factory=list)
    quantizations: dict[str, Quantization] = field(default_factory=dict)


def _served(client, model: str) -> Served:
    """:class:`Served` for ``model`` (ListBlocks resolves any served name); empty when the server has no layer
    extension (the first output's classes are then numbered)."""
    from .errors import ServerError

    try:
        manifest = client.blocks(model).manifest
    except ServerError:
        return Served()
    from .experiment import answer_quantizations

    return Served(list(manifest.labels), answer_quantizations(manifest))


def _infer(args: argparse.Namespace) -> int:
    with _client(args) as client:
        spec = client.model_metadata(args.model).inputs[0]
        x = _load(args, spec, _preprocessing(client, args.model))
        outputs = client.infer(args.model, {spec.name: x})
        if args.json:
            _print_json({"model": args.model, "outputs": {k: {"shape": list(v.shape), "data": v} for k, v in outputs.items()}})
            return 0
        _predictions(outputs, _served(client, args.model), f"{args.model} on {args.input.name}")
    return 0


def _keep(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--keep takes block indices like '1,3' or 'all', not {text!r}") from None


def _chain(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .fit import fit, per_sample

    plan = None
    if args.plan is not None:
        from .plan_cli import read_plan

        plan = read_plan(args.plan, args.model)
    where = args.where or ("server" if plan else "client")
    with _client(args, plan.near if plan else None) as client:
        found = client.blocks(args.model)
        start = found.index(args.start)
        stop = len(found) if args.stop is None else args.stop
        spec = found.input_spec(start)
        x = _load(args, spec, found.manifest.preprocessing if start == 0 else None)
        if args.fit:
            x = fit(x, per_sample(spec.shape), args.fit)
        keep = list(range(start, stop)) if args.keep.strip() == "all" else _keep(args.keep)
        result = client.chain(args.model, x, start=start, stop=stop, where=where, keep=keep, placement=plan)
        if args.json:
            _print_json({
                "model": args.model, "where": where, "blocks_run": result.blocks_run, "addresses": result.addresses,
                "outputs": {k: {"shape": list(v.shape), "data": v} for k, v in result.outputs.items()},
                "kept": {block: {k: {"shape": list(v.shape), "data": v} for k, v in outputs.items()}
                         for block, outputs in result.kept.items()},
            })
            return 0
        title = f"{args.model}: chain in the {where}" + (f", {plan.describe(plan.best)}" if plan else "")
        run = Table("block", "ran at", title=title)
        for name in result.blocks_run:
            run.add_row(name, result.addresses.get(name, args.server))
        _console().print(run)
        if result.kept:
            kept = Table("block", "tensor", "shape", "dtype", "min", "max", "mean", title="kept activations")
            for block, outputs in result.kept.items():
                for name, value in outputs.items():
                    kept.add_row(block, *_describe(name, value))
            _console().print(kept)
        to_the_end = stop == len(found)
        _predictions(result.outputs, _served(client, args.model), f"output of {result.blocks_run[-1]}",
                     scores=to_the_end)
    return 0


# -- compare -----------------------------------------------------------------------------


def _samples(args: argparse.Namespace, found) -> tuple[np.ndarray, np.ndarray]:
    from layerserve.proto.tensors import numpy_dtype

    manifest = found.manifest
    if args.images is not None:
        from .images import read_image_folder

        images, labels, classes = read_image_folder(args.images, found.input_spec(0), manifest.preprocessing,
                                                    list(manifest.labels), args.limit)
        if not set(classes) <= set(manifest.labels):
            names = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
            model_names = "has no class names" if not manifest.labels else "names its classes otherwise"
            _console(stderr=True).print(
                f"note: the folders ({names}) are not the model's classes (its manifest {model_names}): each "
                f"folder is labelled by its sorted position 0-{len(classes) - 1}, as torchvision's ImageFolder "
                "numbers them, so accuracy means something only for a model trained on these folders "
                "(split --labels names a model's classes)", markup=False)
        return images, labels
    path = args.samples
    if path is None:
        if not manifest.samples.file.path:
            raise ValueError(f"{manifest.name} lists no samples; pass --images DIR (one subfolder of pictures per "
                             "class) or --samples FILE.npz")
        path = args.models / manifest.name / manifest.version / manifest.samples.file.path
    from .images import read_samples

    images, labels = read_samples(path, args.limit)
    # As the model takes them: FP32, or integer pixels (UINT8) for a graph that normalizes them itself.
    return np.ascontiguousarray(images, dtype=numpy_dtype(found.input_spec(0).datatype)), np.asarray(labels)


def _compare(args: argparse.Namespace) -> int:
    from . import experiment

    with _client(args) as client:
        found = client.blocks(args.model)
        scores = list(found.manifest.outputs[0].shape[1:]) if found.manifest.outputs else []
        if scores and min(scores) > 0:  # a detector or a segmenter: refused before its pictures are read
            experiment.as_logits(np.zeros([1, *scores], np.float32))
        images, labels = _samples(args, found)
        start = None if args.start is None else found.index(args.start)
        with _progress(experiment.compare_steps(FITS), "paths", client) as step:
            report = experiment.compare(
                client, args.model, images, labels, start=start, where=args.where, seed=args.seed, on_step=step
            )
        if args.images is not None:
            report.samples_label = f"pictures from {args.images}"
        if not args.no_curve:
            total = experiment.skip_curve_steps(len(found), args.every, FITS)
            with _progress(total, "skip curve", client) as step:
                report.skip_curve = experiment.skip_curve(
                    client, args.model, images, labels, every=args.every, seed=args.seed, on_step=step
                )
        if args.matrix_samples > 0:
            count = args.matrix_samples
            with _progress(experiment.skip_matrix_steps(len(found)), "skip matrix", client) as step:
                report.skip_matrix = experiment.skip_matrix(
                    client, args.model, images[:count], labels[:count], fit=args.matrix_fit, seed=args.seed,
                    on_step=step,
                )
        chosen = [e.strip() for e in args.encodings.split(",") if e.strip()]
        if chosen:
            from .compression import encoding_costs

            with _progress(len(images), "encodings", client) as step:
                report.encodings = encoding_costs(client, args.model, images, labels, chosen, args.encoding_rows,
                                                  on_step=step)
        index = None
        if args.report:
            from .report import write_report

            activations = experiment.activations(client, args.model, images[:1])
            index = write_report(report, args.report, images, labels, activations)
    if args.json:
        _print_json({**report.to_dict(), "report": str(index) if index else None})
        return 0
    _print_compare(report)
    if index:
        _console().print(f"report: {index}")
    return 0


def _print_compare(report) -> None:
    from rich.table import Table

    from .experiment import most_common_answer

    console = _console()
    table = Table(
        "path", "blocks", "accuracy", "agreement", "KL(full‖path)", "top-1 conf.", "result",
        title=f"{report.model}: {report.samples} {report.samples_label}, chance "
              f"{report.chance:.{0 if report.chance >= 0.01 else 1}%}{report.scored_on()}",
    )
    for p in report.paths:
        if p.error is not None:
            table.add_row(p.name, p.blocks, "—", "—", "—", "—", f"[red]{p.error}[/red]")
            continue
        if p.name.endswith("chain") or p.name == "full graph":
            same = p.agreement == 1.0
            result = f"{'[green]=' if same else '[red]≠'} full graph[/] (max |Δoutput| {p.max_abs_diff:.1e})"
        else:
            result = most_common_answer(p.predictions, report.class_names)
        table.add_row(p.name, p.blocks, f"{p.accuracy:.1%}", f"{p.agreement:.1%}", f"{p.kl:.3f}", f"{p.confidence:.1%}",
                      result)
    console.print(table)
    if report.skip_curve is not None:
        curve = report.skip_curve
        table = Table("fit", *[f"skip {k}\n(from {b})" for k, b in zip(curve.skipped, curve.start_blocks, strict=True)],
                      title="skip curve: accuracy with the first K blocks skipped")
        for method, values in curve.accuracy.items():
            table.add_row(method, *[f"{v:.1%}" for v in values])
        console.print(table)
    if report.skip_matrix is not None:
        matrix = report.skip_matrix
        table = Table("source \\ into", *matrix.targets,
                      title=f"skip matrix ({matrix.fit}): source fed into a block, accuracy at the head")
        for name, row in zip(matrix.sources, matrix.accuracy, strict=True):
            table.add_row(name, *["" if np.isnan(v) else f"{v:.0%}" for v in row])
        console.print(table)
    if report.encodings is not None:
        console.print(encodings_table(report.encodings))


def encodings_table(costs):
    """A rich table: per cut, each encoding's bytes per request, agreement with fp32 and accuracy."""
    from rich.table import Table

    table = Table("cut (tensor sent)", "fp32 bytes", *[f"{e}: bytes, agreement, accuracy" for e in costs.encodings],
                  title=f"{costs.model}: wire encodings at each cut, {costs.samples} samples, {costs.rows} row(s) per "
                        "request" + ("" if costs.fp32_accuracy is None else f", fp32 accuracy {costs.fp32_accuracy:.1%}"))
    for cut, name in enumerate(costs.cut_names()):
        cells = []
        for e in costs.encodings:
            accuracy = costs.accuracy[e][cut]
            cells.append(f"{costs.bytes_per_request[e][cut]:,}  {costs.agreement[e][cut]:.1%}  "
                         + ("—" if accuracy is None else f"{accuracy:.1%}"))
        table.add_row(f"{cut}: {name}", f"{costs.bytes_per_request['fp32'][cut]:,}", *cells)
    return table
