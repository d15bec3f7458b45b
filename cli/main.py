"""``layerserve`` console script.

Each package contributes its subcommands through a ``register(subparsers)``
function in its own ``cli`` module; heavy imports (torch, onnx) happen inside
the command handlers, so ``layerserve serve`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
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


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; its return value is the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
