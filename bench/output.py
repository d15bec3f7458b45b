"""How a bench script hands its result over: JSON on stdout and, with ``--out``, in a file too."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: object, out: Path | None) -> None:
    """Print ``result`` as indented JSON, and write the same text to ``out`` (its folder made) when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
