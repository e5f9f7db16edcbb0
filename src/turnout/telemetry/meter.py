"""Measuring a response without storing it: token usage from the body, TTFT and usage from SSE chunks.

Only for telemetry: with no sink and no review log, the gateway runs none of this (app.chat_completions).

Per stream chunk the meter does as little as it can, since a stream has many: until the first content
arrives, a regex looks for it (TTFT is its time); from there on, one substring count of non-empty
`"delta": {` objects, spelled as this upstream spells them; the last three chunks are kept,
and the usage (sent last, before `[DONE]`) is read from them once when the record is built: from the
last three events only, since under load a whole stream often arrives as one chunk (searching all of it
for a usage it lacks cost ~7,600 instructions per 16-chunk stream, 3 a byte). A regex and
a substring test on every chunk had cost ~1.65 us per chunk on the EPYC development VM, 26 us per
16-chunk stream.

A JSON body's usage is read from its last `"usage"` key on, without parsing the whole answer: a full
parse cost ~4.3 us for a 300-byte answer and ~9 us for 4 KB on the EPYC VM, the search ~2.3 us for
either (one regex match in the usual key order). Text inside the answer cannot match: JSON escapes its
quotes, so `"usage"` and `"prompt_tokens"` appear as keys only. `usage_of` is the C version of
`_usage_of` (telemetry/_usage.c, built at install; this Python one where it could not be built), which
reads the same bytes the same way in a few hundred instructions instead of ~10,500.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

# A non-empty `content`, `reasoning_content` or `arguments` string. Written to start with the literal `ent`,
# which `re` looks for with a fast substring search, the key checked behind it only there: the plain
# `"(?:content|arguments|reasoning_content)"...` tried its alternatives at every byte, 2x slower
# (1.23 -> 0.66 us per gatebench chunk on the EPYC VM).
_CONTENT = re.compile(rb'ent(?:(?<="content)|(?<=_content)|s(?<="arguments))":\s*"(?!")')
_USAGE_AT = re.compile(rb'"usage"\s*:\s*\{')
# The usual shape, both counts first and in this order (OpenAI, vLLM, Ollama, llama.cpp): one match
_USUAL = re.compile(rb'"usage"\s*:\s*\{\s*"prompt_tokens"\s*:\s*(\d+)\s*,\s*"completion_tokens"\s*:\s*(\d+)')
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
# Prompt tokens served from the upstream's cache: OpenAI's (and vLLM's) `prompt_tokens_details.cached_tokens`,
# DeepSeek's `prompt_cache_hit_tokens`. Looked for only where `cache` follows the usage key (one substring
# search, ~0.1 us, when the upstream reports none).
_CACHED = re.compile(rb'"(?:cached_tokens|prompt_cache_hit_tokens)"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


Usage = tuple[int | None, int | None, int | None]  # prompt, completion and cached prompt tokens
NO_USAGE: Usage = (None, None, None)


def _usage_of(body: bytes, start: int = 0) -> Usage:
    """(prompt_tokens, completion_tokens, cached prompt tokens) from a chat.completion body (or SSE
    events), as far as the upstream reported them: read from the last `"usage": {` after `start` on (the
    usage object and any top-level keys after it)."""
    at = body.rfind(b'"usage"', start)
    if at < 0:
        return NO_USAGE
    cached = None
    if body.find(b"cache", at) >= 0:
        found = _CACHED.search(body, at)
        cached = None if found is None else int(found[1])
    usual = _USUAL.match(body, at)
    if usual is not None:
        return int(usual[1]), int(usual[2]), cached
    if _USAGE_AT.match(body, at) is None:  # `"usage": null`
        return NO_USAGE
    p, c = _PROMPT.search(body, at), _COMPLETION.search(body, at)
    return (None if p is None else int(p.group(1))), (None if c is None else int(c.group(1))), cached


count_deltas: Callable[[bytes, bytes], int]  # `data.count(delta)`: a stream's deltas, once per chunk
try:  # the same function in C (~10,000 instructions less per answer): see _usage.c for why
    from turnout.telemetry._usage import count as count_deltas
    from turnout.telemetry._usage import usage_of as usage_of
except ImportError:  # not built (no C compiler where turnout was installed): the Python one above
    usage_of, count_deltas = _usage_of, bytes.count
COMPILED = usage_of is not _usage_of  # Telemetry.start warns when False; scripts/check requires True


def last_events(data: bytes) -> int:
    """Where the last three SSE data events of `data` start (0 when it holds fewer). An event starts at a
    line beginning with `data:`; a newline inside JSON is escaped, so `\ndata:` is never inside an event.
    One `rsplit` call: three `rfind`s cost twice as much, mostly in parsing their arguments (1.4 -> 0.7 us
    on the EPYC VM)."""
    parts = data.rsplit(b"\ndata:", 3)
    return len(parts[0]) if len(parts) == 4 else 0


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


class Metering(Protocol):
    """What a stream's meter offers: `StreamMeter(started)` makes one (the C `Meter`, or PyStreamMeter)."""

    error: str | None
    sized: bool

    @property
    def started(self) -> float: ...
    @property
    def first_content(self) -> float | None: ...
    def see(self, chunk: bytes) -> None: ...
    def usage(self) -> Usage: ...
    @property
    def deltas(self) -> int: ...
    @property
    def ttft_ms(self) -> float | None: ...


class PyStreamMeter:
    """Watches an SSE stream go by: when the first content arrived, how many content deltas, the usage.

    `deltas` counts the first content, then every non-empty delta object after it: an estimate of output
    tokens for upstreams that report no usage (a trailing delta with an empty string counts as one more).
    Under load a whole stream often arrives as one or two chunks; the regex then stops at the first
    content and the rest is a substring count (callgrind: a regex over every byte was ~7 instructions a
    byte).

    When the upstream was asked for usage (`sized`: the client asked, or `stream_usage`), its usage event
    gives the counts and the deltas are not counted: only the bytes after the first content are summed,
    and should the event not come, `deltas` is estimated as those bytes over the first content event's
    size. The count cost ~8,000 instructions per 16-chunk stream under load (~1.8 us on the EPYC VM).

    The reference for `_usage.Meter`, the same object in C, and what runs where that was not built
    (`StreamMeter` is whichever of the two runs)."""

    __slots__ = ("_after", "_count", "_delta", "_event", "_tail", "error", "first_content", "sized", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_content: float | None = None
        self.error: str | None = None
        self.sized = False  # usage was asked for: sum the bytes instead of counting deltas
        self._count = 0  # deltas counted (sized: 1, the first content)
        self._after = 0  # sized: bytes after the first content event
        self._event = 0  # sized: the first content event's length in bytes, once known
        self._delta = b""  # this stream's spelling of a non-empty delta object, known at the first content
        self._tail = (b"", b"", b"")  # the last three chunks: the usage event and `[DONE]`, even if split

    @property
    def deltas(self) -> int:
        """Non-empty deltas counted; sized, an estimate: the first content, then one per event-sized run of
        the bytes after it, less one for the closing events (the finish event, `[DONE]`)."""
        if self._event:
            return 1 + max(round(self._after / self._event) - 1, 0)
        return self._count

    def see(self, chunk: bytes) -> None:
        """One chunk of the stream (app.relay_stream calls it once per chunk)."""
        tail = self._tail
        self._tail = (tail[1], tail[2], chunk)
        if not self._delta:
            self._first(chunk)
        elif self.sized:
            self._after += len(chunk)
        else:
            self._count += count_deltas(chunk, self._delta)

    def _first(self, chunk: bytes) -> None:
        """Before the first content: look for it in `chunk`; once found, this stream's spelling of a
        non-empty delta object is known (counted in later chunks)."""
        found = _CONTENT.search(chunk)  # stops at the first content: a whole stream may come as one chunk
        if found is None:
            return
        self.first_content = time.perf_counter()
        at = chunk.rfind(b'"delta"', 0, found.start())  # the delta object the first content is in
        self._delta = delta = b'"delta": {"' if at >= 0 and chunk.startswith(b'"delta": ', at) else b'"delta":{"'
        if self.sized:  # the first content event's size (to its blank line), and the bytes after it
            begin, end = chunk.rfind(b"data:", 0, found.start()), chunk.find(b"\n\n", found.end())
            end = end + 2 if end >= 0 else len(chunk)
            self._event, self._after, self._count = end - max(begin, 0), len(chunk) - end, 1
        else:
            self._count += 1 + chunk.count(delta, found.end())

    def usage(self) -> Usage:
        """(prompt_tokens, completion_tokens, cached) from the stream's usage event, when the upstream sent one:
        it is in one of the last three events (the usage event, the finish event, `[DONE]`, in some order)."""
        older, before, last = self._tail
        tail = last if not older and not before else b"".join(self._tail)  # one chunk: no copy
        return usage_of(tail, last_events(tail))

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_content is None else (self.first_content - self.started) * 1000


StreamMeter: Callable[[float], Metering]
try:  # the same object in C: one call per chunk (see _usage.c)
    from turnout.telemetry._usage import Meter as StreamMeter
except ImportError:
    StreamMeter = PyStreamMeter
