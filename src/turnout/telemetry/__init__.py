"""Telemetry: one RequestRecord per finished request, fanned out to sinks that never feed back.

`Telemetry.emit` is called once per request, after the response is complete (for a stream: when it
closes). A sink queues or updates in memory and returns; a failing sink is logged once and never
affects the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from turnout.config import Settings
from turnout.types import RequestRecord, Sink

log = logging.getLogger("turnout")


class Telemetry:
    def __init__(self, sinks: Iterable[Sink] = (), review: ReviewLog | None = None) -> None:
        self.sinks = list(sinks)
        self.review = review  # the opt-in prompt review log; None unless configured
        self._broken: set[int] = set()

    def _hooks(self, name: str) -> list[Callable[[], None]]:
        return [hook for sink in self.sinks if (hook := getattr(sink, name, None)) is not None]

    def stream_opened(self) -> None:
        for hook in self._hooks("stream_opened"):
            hook()

    def stream_closed(self) -> None:
        for hook in self._hooks("stream_closed"):
            hook()

    def exposition(self) -> tuple[bytes, str] | None:
        """The Prometheus text page, or None when metrics are off."""
        for sink in self.sinks:
            render = getattr(sink, "render", None)
            if render is not None:
                out: tuple[bytes, str] = render()
                return out
        return None

    def emit(self, record: RequestRecord) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                sink.emit(record)
            except Exception:
                if i not in self._broken:
                    self._broken.add(i)
                    log.exception("telemetry sink %s failed; its later failures are not logged", type(sink).__name__)

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()
        if self.review is not None:
            await self.review.start()

    async def close(self) -> None:
        if self.review is not None:
            await self.review.close()
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception:
                log.exception("telemetry sink %s failed to close", type(sink).__name__)


class ReviewLog(Protocol):
    """The opt-in prompt review log: the only place request text may be kept."""

    def capture(self, record: RequestRecord, body: dict[str, Any]) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def build_telemetry(settings: Settings) -> Telemetry:
    """The sinks the config turns on; each capability's module is imported only when it is on."""
    t = settings.telemetry
    sinks: list[Sink] = []
    if t.metrics.enabled:
        from turnout.telemetry.metrics import MetricsSink

        sinks.append(MetricsSink(settings))
    if t.audit.enabled:
        from turnout.telemetry.audit import AuditSink

        sinks.append(AuditSink(settings))
    if t.logs.requests:
        from turnout.telemetry.logs import RequestLogSink

        sinks.append(RequestLogSink(settings))
    if t.tracing.enabled:
        from turnout.telemetry.tracing import TracingSink

        sinks.append(TracingSink(settings))
    review: ReviewLog | None = None
    if t.review_log.enabled:
        from turnout.telemetry.review import PromptReviewLog

        review = PromptReviewLog(settings)
    return Telemetry(sinks, review)
