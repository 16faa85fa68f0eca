"""Structured logging: one JSON object a line in production, readable text in a terminal."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.getMessage()}"
        fields = getattr(record, "fields", {})
        if fields:
            line += "  " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(fmt: str = "auto", level: str = "INFO") -> None:
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def fields(**kw) -> dict:
    """``log.info("msg", extra=fields(route=..., status=...))``"""
    return {"fields": kw}


class AccessLog:
    """One line per request, written without the logging machinery (measured: through
    ``logging`` it cost 13 % of the service's throughput). Lines are JSON (or text in a
    terminal), buffered, and written out at least every ``flush_interval`` seconds and at
    shutdown; only the access log is buffered, never errors."""

    def __init__(self, fmt: str = "auto", stream=None, flush_interval: float = 0.2, limit: int = 64 * 1024) -> None:
        import msgspec

        self.stream = stream or sys.stderr
        self.json = (fmt == "json") or (fmt == "auto" and not self.stream.isatty())
        self._encode = msgspec.json.Encoder().encode
        self.buffer: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.flush_interval = flush_interval
        self._scheduled = False
        self._second = -1
        self._stamp = ""

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def write(self, fields: dict) -> None:
        if self.json:
            line = self._encode({"ts": self._timestamp(), "level": "info", "logger": "cachesvc.access",
                                 "msg": "request", **fields}) + b"\n"
        else:
            line = (f"{self._timestamp()[11:19]} INFO    request  "
                    + " ".join(f"{k}={v}" for k, v in fields.items()) + "\n").encode()
        self.buffer.append(line)
        self.size += len(line)
        if self.size >= self.limit:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            try:
                import asyncio

                asyncio.get_running_loop().call_later(self.flush_interval, self.flush)
            except RuntimeError:  # no event loop: write at once
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self.buffer:
            return
        data, self.buffer, self.size = b"".join(self.buffer), [], 0
        out = getattr(self.stream, "buffer", None)
        if out is not None:
            self.stream.flush()
            out.write(data)
            out.flush()
        else:
            self.stream.write(data.decode())
            self.stream.flush()
