"""Regenerate the Python stubs from the .proto files beside this module.

grpcio-tools writes absolute imports (``import grpc_service_pb2``) and registers
every file in protobuf's default descriptor pool. We rewrite the imports to
package-relative ones and point the stubs at a private pool (``_pool.py``), so
they never collide with another copy of ``grpc_service.proto`` (tritonclient
ships one) in the same process.

Usage: ``python -m layerserve.proto.generate [--out DIR]`` (default: this folder).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("model_config.proto", "grpc_service.proto", "repository.proto", "layerserve.proto")
_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)
_DEFAULT_POOL = "_descriptor_pool.Default()"


def generate(out_dir: Path) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` for every proto into ``out_dir``.

    Returns the files written. Raises RuntimeError when protoc fails.
    """
    from grpc_tools import protoc  # dev dependency only

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(PROTO_DIR / name) for name in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = sorted(out_dir.glob("*_pb2*.py*"))
    for path in written:
        text = _IMPORT.sub(lambda m: f"from . import {m.group(1)}{m.group(2) or ''}", path.read_text())
        if _DEFAULT_POOL in text:  # see _pool.py for why our stubs use their own pool
            text = text.replace(_DEFAULT_POOL, "_private_pool.POOL").replace(
                "from google.protobuf.internal import builder as _builder",
                "from google.protobuf.internal import builder as _builder\nfrom . import _pool as _private_pool",
            )
        path.write_text(text)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_DIR)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
