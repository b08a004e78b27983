"""Logging setup: plain text for people, JSON lines (`--log-format json`) for machines and journald."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from gateway.credentials import redact_urls


class RedactUrls(logging.Filter):
    """Every `scheme://user:pass@` in a log line becomes `scheme://***@` (issue 15: the configuration
    refuses credentials in URLs, and this keeps one that reaches a message by another way — an
    exception text quoting a URL — out of the journal)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(*, level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        # Under systemd, journald stamps every line itself.
        handler.setFormatter(logging.Formatter("%(levelname)-7s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactUrls())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pymodbus", "uvicorn.error", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # We report device errors ourselves, once; asyncua also logs every publish at INFO and a traceback
    # for every dropped connection.
    for library in ("pymodbus", "asyncua"):
        logging.getLogger(library).setLevel(logging.CRITICAL)
