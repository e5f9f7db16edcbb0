"""Measuring a response without storing it: token usage from the body, TTFT and usage from SSE chunks.

Chunks are scanned as bytes (a substring test per chunk); only an event that carries `usage` is parsed.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

_CONTENT = re.compile(rb'"(?:content|arguments|reasoning_content)":\s*"(?!")')
_USAGE = re.compile(rb'"usage":\s*\{')


def usage_of(body: bytes) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from a chat.completion body, when the upstream reported them."""
    if b'"usage"' not in body:
        return None, None
    try:
        data: Any = orjson.loads(body)
        usage = data.get("usage") if isinstance(data, dict) else None
    except orjson.JSONDecodeError:
        return None, None
    return _tokens(usage)


def completion_chars(body: bytes) -> int:
    """Characters of answer text in a chat.completion body, for a token estimate when usage is absent."""
    try:
        data: Any = orjson.loads(body)
        total = 0
        for choice in data.get("choices") or ():
            msg = choice.get("message") or {}
            total += len(msg.get("content") or "")
            for call in msg.get("tool_calls") or ():
                total += len((call.get("function") or {}).get("arguments") or "")
        return total
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return 0


def _tokens(usage: Any) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (p if isinstance(p, int) else None), (c if isinstance(c, int) else None)


class StreamMeter:
    """Watches an SSE stream go by: when the first content arrived, how many content deltas, the usage."""

    __slots__ = ("completion_tokens", "deltas", "error", "first_content", "prompt_tokens", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_content: float | None = None
        self.deltas = 0
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.error: str | None = None

    def see(self, chunk: bytes) -> None:
        hits = len(_CONTENT.findall(chunk))
        if hits:
            self.deltas += hits
            if self.first_content is None:
                self.first_content = time.perf_counter()
        if b'"usage"' in chunk and _USAGE.search(chunk):
            for event in chunk.split(b"\n\n"):
                if event.startswith(b"data: ") and _USAGE.search(event):
                    try:
                        p, c = _tokens(orjson.loads(event[6:]).get("usage"))
                    except (orjson.JSONDecodeError, AttributeError):
                        continue
                    self.prompt_tokens, self.completion_tokens = p, c

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_content is None else (self.first_content - self.started) * 1000
