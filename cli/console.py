"""The one way a command makes its rich console.

Without a terminal (pipes, CI logs, README captures) rich wraps tables at 80 columns and cuts
block and tensor names short; there the width is PIPE_WIDTH unless ``COLUMNS`` says otherwise.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

PIPE_WIDTH = 160


def console(stderr: bool = False) -> Console:
    """A rich Console on stdout (or stderr), PIPE_WIDTH wide when that stream is not a terminal."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(stderr=stderr, width=width)
