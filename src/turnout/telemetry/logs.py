"""Log lines: JSON or plain text formatters, and the optional one-line-per-request sink.

`turnout serve` installs a formatter on the `turnout` and `uvicorn` loggers (and the root logger, for
other libraries' warnings) through `turnout.server.log_config`. Both formatters write the same things:
time, level, logger, message, then the record's extra fields, and a traceback when there is one.

Neither ever adds text from a request. Extras are kept only when they are scalars (a message body is a
list or a dict) and not under a key that names text (`body`, `messages`, `prompt`, ...). A traceback
keeps its frames but shows an exception's message only for turnout's own errors and OS errors: any
other exception's message could quote the request that caused it.
"""

from __future__ import annotations

import logging
import time
import traceback
from types import TracebackType
from typing import Any

import orjson

from turnout.config import Settings
from turnout.errors import TurnoutError
from turnout.types import RequestRecord

# Attributes every LogRecord has; anything else on a record came from `extra=`.
STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
TEXT_KEYS = frozenset(
    {"body", "messages", "prompt", "content", "completion", "text", "input", "api_key", "authorization", "headers"}
)
SCALARS = (str, int, float, bool)
SAFE_MESSAGES = (TurnoutError, OSError, ImportError)
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a log call that may be written: scalars under keys that do not name text."""
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in STANDARD and k not in TEXT_KEYS and not k.startswith("_") and isinstance(v, SCALARS)
    }


def describe(exc: BaseException) -> str:
    name = type(exc).__qualname__
    if isinstance(exc, SAFE_MESSAGES):
        message = getattr(exc, "message", None) or str(exc)
        return f"{name}: {message}" if message else name
    return name


def safe_traceback(exc_info: ExcInfo) -> str:
    """A traceback with its frames, and each exception's message only where `describe` allows it."""
    _, exc, tb = exc_info
    lines = ["Traceback (most recent call last):\n", *traceback.format_tb(tb), describe(exc)]
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        lines.append(f"\n(caused by {describe(cause)})")
    return "".join(lines)


def _exc_info(record: logging.LogRecord) -> ExcInfo | None:
    info = record.exc_info
    if not info or info[1] is None or info[0] is None:
        return None
    return info[0], info[1], info[2]


def iso_time(created: float) -> str:
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `time` (UTC), `level`, `logger`, `message`, then extras such as `request_id`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extras(record).items():
            out.setdefault(key, value)
        info = _exc_info(record)
        if info is not None:
            out["exc_type"] = info[0].__qualname__
            out["exc"] = safe_traceback(info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """`2025-01-01 12:00:00,000 INFO turnout: message key=value ...`, the same fields as JSON."""

    def format(self, record: logging.LogRecord) -> str:
        # Built here rather than by logging.Formatter.format, whose cached `exc_text` may hold a full traceback.
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"
        pairs = [f"{k}={_text_value(v)}" for k, v in extras(record).items()]
        if pairs:
            line += " " + " ".join(pairs)
        info = _exc_info(record)
        if info is not None:
            line += "\n" + safe_traceback(info)
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def _text_value(value: Any) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return orjson.dumps(text).decode() if not text or any(c.isspace() or c in '"=' for c in text) else text


FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JsonFormatter, "text": TextFormatter}


# --- one line per request ----------------------------------------------------------------------


def request_fields(rec: RequestRecord) -> dict[str, Any]:
    """A record's loggable fields: ids, names from the config, numbers; never the free-text reason."""
    fields = {
        "request_id": rec.request_id,
        "endpoint": rec.endpoint,
        "status": rec.status,
        "error": rec.error,
        "router": rec.router,
        "route": rec.route,
        "strategy": rec.strategy,
        "confidence": rec.confidence,
        "model": rec.model,
        "upstream": rec.upstream,
        "attempts": len(rec.attempts),
        "stream": rec.stream,
        "latency_ms": rec.latency_ms,
        "decision_ms": rec.decision_ms,
        "ttft_ms": rec.ttft_ms,
        "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens,
        "cached_tokens": rec.cached_tokens,
        "cost_usd": rec.cost_usd,
    }
    return {k: v for k, v in fields.items() if v is not None}


class RequestLogSink:
    """Writes one INFO line per finished request to the `turnout.requests` logger (`telemetry.logs.requests`)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self.log = logging.getLogger("turnout.requests")

    def emit(self, record: RequestRecord) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        where = record.model or record.route or "-"
        self.log.info("%s %s %s %.1f ms", record.endpoint, record.status, where, record.latency_ms,
                      extra=request_fields(record))  # fmt: skip

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
