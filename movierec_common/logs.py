"""Structured logging: one JSON object per line on stderr.

Operators grep and ship these lines; a fixed shape (time, level, logger,
event, then fields) beats free text. Fields are passed with
``log.info("event", extra={"fields": {...}})`` or the :func:`event` helper.

A record with an exception carries it twice: ``error`` is its last line
("ValueError: ...") for grepping and dashboards, ``traceback`` the whole
text, every frame and every chained cause, because the last line alone says
what broke but not where. It stays one JSON string, so a record is still one
line (``jq -r .traceback`` prints it as Python would).

Why our own formatter rather than python-json-logger or structlog: the shape
above needs renamed and lower-cased standard attributes and flattened
``fields``, which python-json-logger needs a subclass of about this size for,
and structlog would change every call site (or wrap the standard library the
same way) for features these servers do not use. The standard library's
``formatException`` does the traceback work either way.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Libraries that are chatty at INFO; their warnings still show.
QUIET_LIBRARIES = ("absl", "tensorflow", "h5py", "matplotlib", "PIL", "faiss", "botocore", "aiobotocore", "s3fs",
                   "fsspec", "urllib3")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info and record.exc_info[0] is not None:
            text = self.formatException(record.exc_info)
            entry.setdefault("error", text.splitlines()[-1])  # a field the caller named "error" wins
            entry["traceback"] = text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, *, exc_info: bool = False,
          **fields: Any) -> None:
    """Logs ``name`` with ``fields``; ``exc_info=True`` inside ``except`` adds the exception and its traceback."""
    logger.log(level, name, exc_info=exc_info, extra={"fields": fields})
