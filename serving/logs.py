"""Structured logs: one JSON object per line with the record's `extra` fields (request ids, token
counts, timings), for log shippers; or the plain human format."""

from __future__ import annotations

import json
import logging
import time

# record attributes that are not the caller's `extra` (vLLM stamps every record with its process name)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "vllm_process_name"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    """The human format, with the `extra` fields appended as key=value."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        return text + ("" if not extras else " " + " ".join(f"{k}={v}" for k, v in extras.items()))


def configure_logging(level: str = "INFO", fmt: str = "plain") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
