"""The fallback loop: try a route's targets in order, retry and fall back only before the first byte.

Retried (same target, up to `attempts_per_target`, then the next target): connect errors, connect and
first-byte timeouts, a dropped connection, 429 (after `Retry-After` when it is within the cap), 5xx,
and 401/403/408 (the gateway's own credentials or a transient refusal, not the client's fault).
Other upstream 4xx are the client's problem: passed through with their status, never retried.
Once the first byte of a stream is on its way to the client, an upstream failure ends the stream
with an error event instead.

With `upstreams.<name>.stream_usage`, a stream whose client did not ask for usage asks for it anyway
(`stream_options.include_usage`), so its record has the upstream's token counts; the usage event that
comes back is taken out of what the client receives (UsageFilter).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from turnout.config import ProxyConfig
from turnout.errors import (
    AllTargetsFailed,
    UpstreamClientError,
    UpstreamDropped,
    UpstreamError,
    UpstreamStatus,
    error_body,
)
from turnout.health import HealthBoard
from turnout.numbers import round3
from turnout.telemetry.meter import Metering, StreamMeter
from turnout.types import Attempt, Target, Upstream, UpstreamResponse

_RETRYABLE_4XX = frozenset({401, 403, 408, 429})
_SECRET = re.compile(r"(sk|pk|rk|key)-[A-Za-z0-9_\-*]{6,}|Bearer\s+\S+", re.IGNORECASE)


@dataclass(slots=True)
class JsonReply:
    status: int
    body: bytes
    content_type: str


MID_STREAM_ERRORS = {"timeout": "timeout", "connect": "connect", "dropped": "connect"}  # else upstream_5xx


@dataclass(slots=True)
class StreamReply:
    content_type: str
    first: bytes  # the stream's first chunk, read before the client was answered
    read: Callable[[], Awaitable[bytes]]  # the next chunk; b"" at the end; raises UpstreamError
    close: Callable[[], None]  # closes the upstream response at once
    meter: Metering
    upstream: str
    strip_usage: bool = False  # the gateway asked for usage the client did not: take its event out
    usage_asked: bool = False  # the upstream was asked for usage (by the client or the gateway): see StreamMeter

    def failed(self, exc: UpstreamError) -> bytes:
        """The upstream failed mid-stream: record why, and the error event that ends the client's stream."""
        kind = exc.kind
        self.meter.error = MID_STREAM_ERRORS.get(kind, "upstream_5xx")
        return stream_error_event(f"upstream `{self.upstream}` failed mid-stream ({kind})", "stream_interrupted")


def asks_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _event_start(data: bytes, lo: int, hi: int) -> int:
    """Just after the last blank line (`\n\n` or `\r\n\r\n`) in `data[lo:hi]`, or `lo` when it has none:
    where the event holding position `hi` begins."""
    lf = data.rfind(b"\n\n", lo, hi)
    crlf = data.rfind(b"\r\n\r\n", max(lf, lo), hi)  # only one after the last `\n\n` can end later
    return max(lf + 2 if lf >= 0 else lo, crlf + 4 if crlf >= 0 else lo)


def _event_end(data: bytes, at: int) -> int:
    """Where the SSE event around `at` ends (after its blank line), or -1 when it has not ended yet."""
    lf, crlf = data.find(b"\n\n", at), data.find(b"\r\n\r\n", at)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 4
    return lf + 2 if lf >= 0 else -1


class UsageFilter:
    """Takes the usage event (`"choices": []` with `"usage"`) out of a stream whose usage the gateway asked
    for on its own (`stream_usage`), so the client gets the stream it asked for: some clients read
    `choices[0]` of every chunk. Passes whole events only: the bytes after the last blank line wait for
    the next chunk, so an event split over two chunks is judged whole. Upstreams end their chunks at event
    boundaries, so nothing waits in practice. Separators `\n\n` and `\r\n\r\n` are both read."""

    __slots__ = ("rest",)

    def __init__(self) -> None:
        self.rest = b""  # the start of an event not yet ended

    def __call__(self, chunk: bytes) -> bytes:
        data = self.rest + chunk if self.rest else chunk
        if data.endswith(b"\n\n"):  # the usual chunk: whole events (`\r\n\r\n` ends with `\n\r\n`, not this)
            whole, self.rest = data, b""
        else:
            end = _event_start(data, 0, len(data))
            if not end:  # no event ended in it yet
                self.rest = data
                return b""
            whole, self.rest = (data, b"") if end == len(data) else (data[:end], data[end:])
        return strip_usage(whole)


def _strip_usage(whole: bytes) -> bytes:
    """`whole` (whole events) without its usage events. The reference for `strip_usage` in C (_usage.c),
    which runs where it was built: bytes.find scans a short needle at ~1 ns a byte, ~7 us here per 3 KB
    stream in one chunk."""
    first = whole.find(b"[]")  # one scan: the usage event has `"choices":[]` (or `"choices": []`)
    if first < 0:
        return whole
    return _without_usage(whole, max(first - 12, 0))


def _without_usage(whole: bytes, look: int) -> bytes:
    """`whole` (whole events) without its usage events, found from their `"choices": []` on from `look`,
    not by splitting every event: for a whole stream in one chunk (under load) that cost ~250,000
    instructions per 16-chunk stream, this ~44,000 (callgrind, EPYC VM)."""
    out, start = [], 0
    while True:
        at = whole.find(b'"choices":[]', look)
        spaced = whole.find(b'"choices": []', look, at if at >= 0 else len(whole))
        if spaced >= 0 and (at < 0 or spaced < at):
            at = spaced
        if at < 0:
            break
        begin, end = _event_start(whole, start, at), _event_end(whole, at)
        if end < 0:
            end = len(whole)
        if b'"usage"' in whole[begin:end]:
            out.append(whole[start:begin])
        else:  # an empty choice list without usage is not ours: keep it, look further
            out.append(whole[start:end])
        start = look = end
    out.append(whole[start:])
    return b"".join(out)


strip_usage: Callable[[bytes], bytes]
try:
    from turnout.telemetry._usage import strip_usage
except ImportError:  # not built (no C compiler at install)
    strip_usage = _strip_usage


@dataclass(slots=True)
class Outcome:
    reply: JsonReply | StreamReply
    target: Target
    attempts: list[Attempt] = field(default_factory=list)


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove anything that looks like a key from an upstream's message, and cap its length."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _SECRET.sub("[redacted]", text)[:500]


def client_error(status: int, body: bytes, upstream: str, secrets: tuple[str, ...]) -> UpstreamClientError:
    """An upstream 4xx re-shaped as an OpenAI error; the raw body never passes through."""
    message, type_, param, code = f"upstream `{upstream}` rejected the request (HTTP {status})", None, None, None
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = scrub(str(err.get("message") or message), secrets)
            type_, param, code = err.get("type"), err.get("param"), err.get("code")
        elif isinstance(err, str):
            message = scrub(err, secrets)
    except orjson.JSONDecodeError:
        pass
    return UpstreamClientError(
        status,
        message,
        str(type_) if type_ else "invalid_request_error",
        str(param) if param is not None else None,
        str(code) if code is not None else None,
    )


def stream_error_event(message: str, code: str, type_: str = "upstream_error") -> bytes:
    return b"data: " + error_body(message, type_, None, code) + b"\n\n"


class Proxy:
    def __init__(self, config: ProxyConfig, upstreams: Mapping[str, Upstream], health: HealthBoard) -> None:
        self.config = config
        self.upstreams = upstreams
        self.health = health
        self._secrets = {name: self._secrets_of(up) for name, up in upstreams.items()}
        self._stream_usage = {name: bool(getattr(getattr(up, "config", None), "stream_usage", False))
                              for name, up in upstreams.items()}  # fmt: skip

    @staticmethod
    def _secrets_of(upstream: Upstream) -> tuple[str, ...]:
        cfg = getattr(upstream, "config", None)
        key = getattr(cfg, "api_key", "")
        return (key,) if key else ()

    async def forward(
        self,
        route: str,
        targets: list[Target],
        body: dict[str, Any],
        stream: bool,
        attempts: list[Attempt],
        started: float = 0.0,
    ) -> Outcome:
        """Answer from the first target that can; raise AllTargetsFailed with every attempt otherwise."""
        failures: list[tuple[str, UpstreamError]] = []
        tries = self.config.attempts_per_target
        asked = stream and asks_usage(body)
        for ti, target in enumerate(targets):
            body["model"] = target.name
            inject = stream and not asked and self._stream_usage.get(target.upstream, False)
            if inject:  # the client's own body is left as it was, for the next target
                options = body.get("stream_options")
                extra = options if isinstance(options, dict) else {}
                payload = orjson.dumps({**body, "stream_options": {**extra, "include_usage": True}})
            else:
                payload = orjson.dumps(body)
            upstream = self.upstreams[target.upstream]
            for n in range(tries):
                start = time.perf_counter()
                try:
                    reply = await self._attempt(upstream, target, payload, stream, started)
                except UpstreamError as exc:
                    attempts.append(
                        Attempt(
                            target.key,
                            exc.kind,
                            getattr(exc, "upstream_status", None),
                            _ms(start),
                            _off(start, started),
                        )
                    )
                    failures.append((target.key, exc))
                    if exc.kind != "rate_limited":  # busy is not broken
                        self.health.failed(target.upstream)
                    last = ti == len(targets) - 1 and n == tries - 1
                    wait = self._wait_before_retry(exc, n)
                    if wait is None:
                        break  # Retry-After beyond the cap: go to the next target now
                    if not last and n < tries - 1 and wait > 0:
                        await asyncio.sleep(wait)
                    continue
                except UpstreamClientError as exc:
                    attempts.append(Attempt(target.key, "upstream_4xx", exc.status, _ms(start), _off(start, started)))
                    self.health.ok(target.upstream)
                    raise
                if isinstance(reply, JsonReply):
                    status = reply.status
                else:
                    status, reply.strip_usage, reply.usage_asked = 200, inject, inject or asked
                attempts.append(Attempt(target.key, None, status, _ms(start), _off(start, started)))
                self.health.ok(target.upstream)
                return Outcome(reply, target, attempts)
        raise AllTargetsFailed(route, failures)

    def _wait_before_retry(self, exc: UpstreamError, n: int) -> float | None:
        if isinstance(exc, UpstreamStatus) and exc.retry_after is not None:
            return exc.retry_after if exc.retry_after <= self.config.retry_after_cap_s else None
        return self.config.backoff_s * (1 << n)

    async def _attempt(
        self, upstream: Upstream, target: Target, payload: bytes, stream: bool, started: float
    ) -> JsonReply | StreamReply:
        resp = await upstream.send(target.name, payload, stream)
        if resp.status >= 400:
            await self._raise_for_status(resp, upstream.name)
        if not stream:
            return JsonReply(resp.status, await resp.read(), resp.content_type)
        first = await resp.next_chunk()  # a failure has closed the response
        if not first:
            raise UpstreamDropped(f"upstream `{upstream.name}` closed the stream before any data")
        return StreamReply(resp.content_type, first, resp.next_chunk, resp.close, StreamMeter(started), upstream.name)

    async def _raise_for_status(self, resp: UpstreamResponse, upstream: str) -> None:
        status = resp.status
        try:
            body = await resp.read()
        except UpstreamError:
            body = b""
        if status >= 500 or status in _RETRYABLE_4XX:
            raise UpstreamStatus(
                f"upstream `{upstream}` answered HTTP {status}", upstream_status=status, retry_after=resp.retry_after
            )
        raise client_error(status, body, upstream, self._secrets.get(upstream, ()))


def _off(start: float, started: float) -> float:
    return round3((start - started) * 1000) if started else 0.0


def _ms(start: float) -> float:
    return round3((time.perf_counter() - start) * 1000)
