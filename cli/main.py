"""``layerserve`` console script.

Each package contributes its subcommands through a ``register(subparsers)``
function in its own ``cli`` module; heavy imports (torch, onnx) happen inside
the command handlers, so ``layerserve serve`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Packages whose ``<package>.cli`` module registers subcommands, in help order.
_COMMAND_MODULES = (
    "layerserve.export.cli",
    "layerserve.server.cli",
    "layerserve.client.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser; a package whose cli module is missing contributes nothing."""
    parser = argparse.ArgumentParser(
        prog="layerserve",
        description="Export, split, serve and compare CNNs block by block over the Open Inference Protocol.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


# Exit codes: 0 done, 1 the server refused a client command's request, 2 the command refused its input
# (each handler prints that one line), 3 an error no handler foresaw (UNEXPECTED_EXIT).
UNEXPECTED_EXIT = 3
# Set to see the traceback of an unexpected error instead of its one line.
DEBUG_VARIABLE = "LAYERSERVE_DEBUG"


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; its return value is the exit code.

    Handlers print their own one-line refusals. An exception none of them foresaw (a float64 model met
    ONNX Runtime's missing kernel inside the chain check) printed a traceback to the person at the
    terminal; it is now one bounded line, with the traceback behind LAYERSERVE_DEBUG=1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except Exception as error:  # noqa: BLE001 - the last resort for what no handler foresaw
        if os.environ.get(DEBUG_VARIABLE):
            raise
        text = " ".join(f"{type(error).__name__}: {error}".split())
        text = text if len(text) <= 400 else text[:399] + "…"
        print(f"layerserve {args.command}: unexpected error, {text} (run with {DEBUG_VARIABLE}=1 for the traceback, "
              "and please report it)", file=sys.stderr)
        return UNEXPECTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
