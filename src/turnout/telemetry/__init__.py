"""Telemetry: one RequestRecord per finished request, fanned out to sinks that never feed back.

The request path only queues what the record is made of (`record`, when the response is complete; for a
stream, when it closes: one C call, record.Recorder, reads it from the request's ASGI scope). Records are
built and handed to the sinks in batches (`flush`): when BATCH requests wait, `telemetry.batch_delay_s`
(DELAY_S by default) after the first of them, before `/metrics` is rendered and at shutdown. Done one
request at a time, between the parsing and proxying of other requests, the same work cost about twice as
much CPU as in a batch, where its code and data stay in the CPU's caches (measured under load: ~32 us per
request on the event loop one at a time, against ~15 us batched); even with the record built in C,
building it as its request ends cost +1.3 % CPU per stream against the batch (docs/metrics.md). A sink
queues or updates in memory and returns; a failing sink is logged once and never affects a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, MutableMapping
from itertools import starmap
from time import perf_counter
from typing import Any, Protocol

from turnout.config import Settings
from turnout.telemetry.record import CTX, Recorder, record_builder, take
from turnout.types import RequestRecord, Sink, StreamCount

log = logging.getLogger("turnout")

BATCH = 128  # records waiting that are flushed at once
DELAY_S = 0.05  # the longest a record waits before the sinks see it (`telemetry.batch_delay_s`)

# What a request leaves behind for its record: telemetry.record.build_record's arguments after `models`.
Inputs = tuple[Any, ...]


class Telemetry:
    def __init__(
        self,
        sinks: Iterable[Sink] = (),
        review: ReviewLog | None = None,
        build: Callable[..., RequestRecord] | None = None,
        delay_s: float = DELAY_S,
    ) -> None:
        self.sinks = list(sinks)  # add a sink with `add`, which keeps `enabled` right
        self.delay_s = delay_s
        self.review = review  # the opt-in prompt review log; None unless configured
        # Whether anything receives records: with no sink and no review log, no record is built. An
        # attribute, not a property: the request path reads it twice per request.
        self.enabled = bool(self.sinks) or review is not None
        self.build = build  # Inputs -> RequestRecord; set by build_telemetry
        self._broken: set[int] = set()
        self._pending: list[Inputs] = []  # the one list, emptied in place: the C recorder holds it
        self._timer: asyncio.TimerHandle | None = None
        # Queue a finished request's record inputs, read from its ASGI scope: the request path's one call,
        # in C where it was built (record.Recorder: `take`, then a flush or a timer), else _record.
        self.record: Callable[[MutableMapping[str, Any], str, str], None] = (
            self._record if Recorder is None else Recorder(self._pending, BATCH, perf_counter, self.flush, self._arm)
        )
        # Streams being relayed now, counted in place by app.chat_completions; a sink with a `streams`
        # counter (the metrics sink) shares this one.
        self.streams = StreamCount()
        for sink in self.sinks:
            if isinstance(getattr(sink, "streams", None), StreamCount):
                sink.streams = self.streams  # type: ignore[attr-defined]

    def add(self, sink: Sink) -> None:
        """One more sink (tests add theirs to a running gateway's telemetry)."""
        self.sinks.append(sink)
        self.enabled = True

    def exposition(self) -> tuple[bytes, str] | None:
        """The Prometheus text page, or None when metrics are off. Records still waiting are counted first."""
        for sink in self.sinks:
            render = getattr(sink, "render", None)
            if render is not None:
                self.flush()
                out: tuple[bytes, str] = render()
                return out
        return None

    def _record(self, scope: MutableMapping[str, Any], endpoint: str, request_id: str) -> None:
        """`record` in Python: the reference for record.Recorder."""
        self._queued(take(scope, endpoint, request_id, perf_counter(), self._pending))

    def submit(self, inputs: Inputs) -> None:
        """Queue a finished request's record inputs, given as they are."""
        self._pending.append(inputs)
        self._queued(len(self._pending))

    def _queued(self, waiting: int) -> None:
        """After inputs were queued, `waiting` in all: a full batch is flushed at once, the first inputs
        after a flush arm the delay (record.Recorder does the same in C)."""
        if waiting >= BATCH:
            self.flush()
        elif waiting == 1:
            self._arm()

    def _arm(self) -> None:
        """Flush `delay_s` from now, unless a flush is already due."""
        if self._timer is not None:
            return
        try:
            self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._flush_later)
        except RuntimeError:  # no loop (a synchronous caller): hand the records over now
            self.flush()

    def _flush_later(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Build the waiting records and hand them to every sink, sink by sink."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending = self._pending[:]
        if not pending:
            return
        self._pending.clear()
        build = self.build
        assert build is not None, "Telemetry.build is not set"
        try:
            records = list(starmap(build, pending))  # no bytecode per record
        except Exception:  # one at a time, so one bad record costs only itself
            records = []
            for inputs in pending:
                try:
                    records.append(build(*inputs))
                except Exception:
                    log.exception("telemetry: building a request record failed")
        self.emit_many(records)
        review = self.review
        if review is not None:
            for record, inputs in zip(records, pending, strict=False):
                ctx = inputs[CTX]
                if ctx is not None:
                    review.capture(record, ctx.body)

    def emit_many(self, records: list[RequestRecord]) -> None:
        """Every record to every sink. A sink with `emit_many` gets the batch in one call (a call and a
        `try` less per record); if that fails, it gets the batch again record by record, so one bad record
        costs only itself. So `emit_many` takes all of a batch or none of it (AuditSink builds every row
        before it queues any)."""
        for i, sink in enumerate(self.sinks):
            many = getattr(sink, "emit_many", None)
            if many is not None:
                try:
                    many(records)
                    continue
                except Exception:
                    pass
            emit = sink.emit
            for record in records:
                try:
                    emit(record)
                except Exception:
                    if i not in self._broken:
                        self._broken.add(i)
                        log.exception(
                            "telemetry sink %s failed; its later failures are not logged", type(sink).__name__
                        )

    def emit(self, record: RequestRecord) -> None:
        self.emit_many([record])

    async def start(self) -> None:
        if self.enabled:
            from turnout.telemetry import meter, record

            built = {"turnout.telemetry._usage": meter.COMPILED, "turnout.telemetry._record": record.COMPILED}
            missing = [name for name, ok in built.items() if not ok]
            if missing:
                log.warning(
                    "telemetry: not built at install (no C compiler?): %s; telemetry runs the same code in "
                    "Python: ~10,000 more instructions (2-3 us) per request to read token usage (20,000-45,000 "
                    "to meter a stream, ~7 us more to take a `stream_usage` event out of a 3 KB stream), "
                    "~24,000 more to build the record, its audit row and its metric updates. Reinstall with a "
                    "C compiler to build them.",
                    ", ".join(missing),
                )
        for sink in self.sinks:
            await sink.start()
        if self.review is not None:
            await self.review.start()

    async def close(self) -> None:
        self.flush()  # a clean shutdown loses no record
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
    metrics = None
    if t.metrics.enabled:
        from turnout.telemetry.metrics import MetricsSink

        metrics = MetricsSink(settings)
        sinks.append(metrics)
    if t.audit.enabled:
        from turnout.telemetry.audit import AuditSink

        audit = AuditSink(settings)
        sinks.append(audit)
        if metrics is not None:
            metrics.watch(audit)
    if t.logs.requests:
        from turnout.telemetry.logs import RequestLogSink

        sinks.append(RequestLogSink(settings))
    if t.tracing.enabled:
        from turnout.telemetry.tracing import TracingSink

        sinks.append(TracingSink(settings))
    review: ReviewLog | None = None
    if t.review_log.enabled:
        from turnout.telemetry.review import PromptReviewLog

        review_log = PromptReviewLog(settings)
        if metrics is not None:
            metrics.watch(review_log)
        review = review_log
    return Telemetry(sinks, review, record_builder(settings.models), t.batch_delay_s)
