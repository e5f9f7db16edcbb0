"""OpenTelemetry traces, built after the fact from each finished request's record.

Imported only when `telemetry.tracing.enabled` is true, so a gateway without tracing never loads
OpenTelemetry. Nothing runs while a request is served: when it is over, `emit` turns its RequestRecord
into finished spans with their real start and end times and queues them on a batch processor, whose
thread exports them over OTLP/HTTP.

One trace per request:

    chat {route}       SERVER    arrival .. last byte to the client
    ├── decide         INTERNAL  the router's decision (placed at the start; it lasts `decision_ms`)
    ├── chat {model}   CLIENT    attempt 1: ERROR, `error.type` http_500
    └── chat {model}   CLIENT    attempt 2: answered; for a stream, until the stream ended

Spans carry what the record carries (names from the config, numbers, bounded error kinds), never text:
no prompt, completion, key, target model id, or the decision's free-text reason (an LLM judge writes it).

The spans are the SDK's `ReadableSpan`s, made whole and handed to the processor's `on_end`, as a
TracerProvider does when a live span ends. Going through `Tracer.start_span` instead costs about 15x
more per request (attribute re-validation and locks per span, sampler, processor start hooks), for
spans that are already finished. No TracerProvider is built and the global one is never touched.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from turnout import __version__
from turnout.config import Settings
from turnout.types import Attempt, RequestRecord

HTTP_ROUTES = {"chat": "/v1/chat/completions", "route": "/v1/route"}
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
UNSET = Status(StatusCode.UNSET)
Attributes = dict[str, Any]


def traces_endpoint(endpoint: str | None) -> str | None:
    """The OTLP/HTTP traces URL: a bare collector address gets `/v1/traces`; None leaves it to the
    exporter, which reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`."""
    if endpoint is None or urlsplit(endpoint).path not in ("", "/"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


def _ns(ms: float) -> int:
    return int(ms * 1_000_000)


def _set(attrs: Attributes, key: str, value: Any) -> None:
    if value is not None:  # OpenTelemetry rejects None attribute values
        attrs[key] = value


def root_attributes(rec: RequestRecord) -> Attributes:
    attrs: Attributes = {
        "turnout.request_id": rec.request_id,
        "turnout.status": rec.status,
        "turnout.attempts": len(rec.attempts),
        "turnout.stream": rec.stream,
        "http.response.status_code": rec.status,
    }
    _set(attrs, "http.route", HTTP_ROUTES.get(rec.endpoint))
    if rec.error is not None:
        attrs["error.type"] = attrs["turnout.error"] = rec.error
    _set(attrs, "turnout.router", rec.router)
    _set(attrs, "turnout.route", rec.route)
    _set(attrs, "turnout.strategy", rec.strategy)
    _set(attrs, "turnout.confidence", rec.confidence)
    _set(attrs, "turnout.model", rec.model)
    _set(attrs, "turnout.upstream", rec.upstream)
    _set(attrs, "turnout.ttft_ms", rec.ttft_ms)
    _set(attrs, "turnout.cost_usd", rec.cost_usd)
    if rec.cache != "off":
        attrs["turnout.cache"] = rec.cache
    return attrs


def decide_attributes(rec: RequestRecord) -> Attributes:
    attrs: Attributes = {}
    _set(attrs, "turnout.route", rec.route)
    _set(attrs, "turnout.strategy", rec.strategy)
    _set(attrs, "turnout.confidence", rec.confidence)
    _set(attrs, "turnout.threshold", rec.threshold)
    _set(attrs, "turnout.margin", rec.margin)
    if rec.provenance:
        attrs["turnout.provenance"] = list(rec.provenance)
    if rec.trace:  # each strategy's verdict, in order: `semantic:decided`, `rules:abstained`, ...
        attrs["turnout.strategies"] = [f"{t.get('strategy')}:{t.get('verdict')}" for t in rec.trace]
    for route, score in rec.scores.items():
        attrs[f"turnout.score.{route}"] = score
    return attrs


def is_error(rec: RequestRecord) -> bool:
    """A 5xx, or a stream that broke after its 200; a client's own mistake (4xx) or leaving is not ours."""
    return rec.status >= 500 or (rec.status < 400 and rec.error is not None and rec.error != "cancelled")


class TracingSink:
    """Turns each RequestRecord into one trace and queues it for export over OTLP/HTTP."""

    def __init__(self, settings: Settings, exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        self.config = cfg = settings.telemetry.tracing
        self._exporter = exporter  # tests and benchmarks may pass the SDK's in-memory exporter
        self._processor: BatchSpanProcessor | None = None
        self._kinds: Mapping[str, str] = {name: up.kind for name, up in settings.upstreams.items()}
        self._resource = Resource.create({"service.name": cfg.service_name, "service.version": __version__})
        self._scope = InstrumentationScope("turnout", __version__)
        self._ratio = cfg.sample_ratio

    async def start(self) -> None:
        cfg = self.config
        exporter = self._exporter or OTLPSpanExporter(
            endpoint=traces_endpoint(cfg.endpoint), headers=dict(cfg.headers) or None
        )
        self._processor = BatchSpanProcessor(exporter)  # its thread batches and exports; env `OTEL_BSP_*` apply

    async def close(self) -> None:
        processor, self._processor = self._processor, None
        if processor is not None:  # exports what is queued; at worst one export timeout (10 s by default)
            await asyncio.to_thread(processor.shutdown)

    def emit(self, record: RequestRecord) -> None:
        processor = self._processor
        if processor is None or (self._ratio < 1.0 and random.random() >= self._ratio):
            return
        for span in self.spans(record):
            processor.on_end(span)

    def spans(self, rec: RequestRecord) -> list[ReadableSpan]:
        """The request's finished spans, children first, root last."""
        bits = random.getrandbits  # the module's generator: reseeded in forked workers, unlike a private one
        trace_id = bits(128) or 1
        root = SpanContext(trace_id, bits(64) or 1, False, SAMPLED)
        start = int(rec.started_at * 1e9)
        end = start + _ns(rec.latency_ms)
        out: list[ReadableSpan] = []
        if rec.decision_ms is not None:
            finished = min(end, start + _ns(rec.decision_ms))
            own = SpanContext(trace_id, bits(64) or 1, False, SAMPLED)
            out.append(self._span("decide", own, root, SpanKind.INTERNAL, decide_attributes(rec), start, finished))
        answered = len(rec.attempts) - 1 if rec.attempts and rec.attempts[-1].error is None else -1
        for i, attempt in enumerate(rec.attempts):
            own = SpanContext(trace_id, bits(64) or 1, False, SAMPLED)
            out.append(self._attempt(own, root, rec, attempt, i, i == answered, start, end))
        status = Status(StatusCode.ERROR, rec.error or f"HTTP {rec.status}") if is_error(rec) else UNSET
        name = rec.endpoint if rec.route is None else f"{rec.endpoint} {rec.route}"
        out.append(self._span(name, root, None, SpanKind.SERVER, root_attributes(rec), start, end, status))
        return out

    def _span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Attributes,
        start: int,
        end: int,
        status: Status = UNSET,
    ) -> ReadableSpan:
        return ReadableSpan(name, context, parent, self._resource, attributes, kind=kind, status=status,
                            start_time=start, end_time=end, instrumentation_scope=self._scope)  # fmt: skip

    def _attempt(
        self,
        context: SpanContext,
        parent: SpanContext,
        rec: RequestRecord,
        attempt: Attempt,
        index: int,
        answered: bool,
        start: int,
        end: int,
    ) -> ReadableSpan:
        model = self.settings.models.get(attempt.target)
        upstream = model.upstream if model is not None else rec.upstream
        kind = self._kinds.get(upstream or "", "openai")
        attrs: Attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": kind,  # the protocol; OpenAI-compatible servers report `openai`
            "gen_ai.system": kind,  # the older name of the same attribute, still read by many backends
            "gen_ai.request.model": attempt.target,  # the config's model key, never the upstream's model id
            "turnout.attempt": index + 1,
        }
        _set(attrs, "turnout.upstream", upstream)
        _set(attrs, "http.response.status_code", attempt.status)
        status = UNSET
        if attempt.error is not None:
            attrs["error.type"] = attempt.error
            status = Status(StatusCode.ERROR, attempt.error)
        if answered:
            _set(attrs, "gen_ai.usage.input_tokens", rec.prompt_tokens)
            _set(attrs, "gen_ai.usage.output_tokens", rec.completion_tokens)
            _set(attrs, "gen_ai.usage.cache_read.input_tokens", rec.cached_tokens)  # a part of input_tokens
            if rec.tokens_estimated:
                attrs["turnout.tokens_estimated"] = True
            if rec.stream:
                attrs["turnout.first_chunk_ms"] = attempt.elapsed_ms
        began = min(end, start + _ns(attempt.started_ms))
        # A stream's attempt is timed to its first chunk; the upstream keeps sending until the relay ends.
        finished = end if answered and rec.stream else min(end, began + _ns(attempt.elapsed_ms))
        name = f"chat {attempt.target}" if model is not None else "chat"  # passthrough: the client's string
        return self._span(name, context, parent, SpanKind.CLIENT, attrs, began, finished, status)
