"""Logging set-up of the supervisor and the CLI: plain text or one JSON object per line.

Runs in the supervisor and the CLI (never on import: :func:`configure` is called by ``main``).
Records go to stderr, which systemd's journal captures.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Dict, Optional

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, pid (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: Dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure(log_format: str = "text", level: str = "INFO",
              stream: Optional[Any] = None) -> logging.Handler:
    """Install one stderr handler on the root logger (replacing any installed by us before).

    :param log_format: ``"text"`` or ``"json"``.
    :param level: a level name.
    :returns: the handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_shmflags", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._shmflags = True  # type: ignore[attr-defined]
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    return handler
