"""Structured logs: one JSON object per line (or plain text), with the fields a call passed.

Callers pass context as ``extra={"fields": {...}}``; the JSON formatter merges it
into the line, so a log shipper gets ``{"msg": "model loaded", "model": ...}``.
"""

from __future__ import annotations

import json
import logging
import os
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": os.getpid(),
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        return f"{text} {json.dumps(fields, default=str)}" if fields else text


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Send layerserve's logs to stderr in ``fmt`` ("json" or "text")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("layerserve")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
