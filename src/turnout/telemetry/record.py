"""Building the RequestRecord of a finished request from what the request path left behind."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, MutableMapping
from types import ModuleType
from typing import Any

from turnout.config import ModelConfig
from turnout.errors import (
    AllTargetsFailed,
    AuthError,
    RequestError,
    TurnoutError,
    UpstreamClientError,
)
from turnout.features import estimate_tokens
from turnout.numbers import round3, round4
from turnout.telemetry.meter import NO_USAGE, Usage
from turnout.types import Decision, RequestContext, RequestRecord, Target

ATTEMPT_ERRORS = {"timeout": "timeout", "connect": "connect", "dropped": "connect", "rate_limited": "rate_limited"}


def error_kind(exc: BaseException) -> str:
    """A short, bounded reason for metrics and the audit log."""
    if isinstance(exc, AllTargetsFailed):
        if not exc.attempts:
            return "other"
        last = exc.attempts[-1][1].kind
        if last in ATTEMPT_ERRORS:
            return ATTEMPT_ERRORS[last]
        return "upstream_4xx" if last in ("http_401", "http_403", "http_408") else "upstream_5xx"
    if isinstance(exc, UpstreamClientError):
        return "upstream_4xx"
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, RequestError):
        return "parse_error"
    if isinstance(exc, TurnoutError) and exc.code == "gateway_shutdown":
        return "cancelled"
    return "internal"


def cost(
    model: ModelConfig | None, prompt: int | None, completion: int | None, cached: int | None = None
) -> float | None:
    if model is None or not priced(model):
        return None
    return model.cost_usd(prompt or 0, completion or 0, cached or 0)


def priced(model: ModelConfig) -> bool:
    """Whether the model has a price: without one, its requests have no cost."""
    return bool(model.input_price or model.output_price or model.cached_input_price)


def estimate_prompt_tokens(ctx: RequestContext) -> int:
    if ctx.features is not None:
        return ctx.features.tokens
    total = 0
    for m in ctx.body.get("messages", ()):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            total += estimate_tokens(content)
    return total


CTX = 5  # the position of the RequestContext in a record's inputs (see build_record)


def build_record(
    models: Mapping[str, ModelConfig],
    request_id: str,
    started_at: float,
    endpoint: str,
    status: int,
    latency_ms: float,
    ctx: RequestContext | None,
    error: str | None = None,
    usage: Usage = NO_USAGE,
    ttft_ms: float | None = None,
    deltas: int = 0,
) -> RequestRecord:
    """The record of a finished request. Arguments after `models` are what the request path queues
    (telemetry.Telemetry.submit), in this order. One constructor call with every field: setting fields
    one by one after construction cost ~1.5 us more per record (this runs once per request)."""
    if ctx is None:
        return RequestRecord(request_id, started_at, endpoint, status, error=error, latency_ms=round3(latency_ms))
    attempts = ctx.attempts
    target = ctx.target
    if target is not None:
        model: str | None = target.key
        upstream: str | None = target.upstream
    elif attempts:  # failed: the last model tried
        model = attempts[-1].target
        upstream = models[model].upstream if model in models else None
    else:
        model = upstream = None
    prompt = completion = cached = cost_usd = None
    estimated = False
    if endpoint == "chat" and status == 200:
        prompt, completion, cached = usage
        if prompt is None or completion is None:
            estimated = True
            prompt = estimate_prompt_tokens(ctx) if prompt is None else prompt
            completion = deltas if completion is None else completion
        cost_usd = cost(models.get(model or ""), prompt, completion, cached)
    d = ctx.decision
    if d is None:
        return RequestRecord(
            request_id, started_at, endpoint, status, error, model=model, upstream=upstream, attempts=attempts,
            stream=ctx.stream, latency_ms=round3(latency_ms), ttft_ms=None if ttft_ms is None else round3(ttft_ms),
            prompt_tokens=prompt, completion_tokens=completion, tokens_estimated=estimated, cost_usd=cost_usd,
            cached_tokens=cached,
        )  # fmt: skip
    return RequestRecord(
        request_id, started_at, endpoint, status, error, d.router, d.route, model, upstream, d.strategy, d.reason,
        d.confidence, d.scores, d.threshold, d.margin, d.provenance, round4(d.elapsed_ms), d.trace, attempts,
        ctx.stream, round3(latency_ms), None if ttft_ms is None else round3(ttft_ms), prompt, completion, cached,
        estimated, cost_usd,
    )  # fmt: skip


def record_builder(models: Mapping[str, ModelConfig]) -> Callable[..., RequestRecord]:
    """build_record for one config's models: what Telemetry calls on each queued request. In C where it
    was built (_record.c: ~12,700 instructions per record in Python, a few hundred there), with this
    module's function for what the C one leaves to Python (no decision, failures, unexpected types)."""
    python = functools.partial(build_record, models)
    if _record is None:
        return python
    builder: Callable[..., RequestRecord] = _record.Builder(prices(models), python)
    return builder


def prices(models: Mapping[str, ModelConfig]) -> dict[str, tuple[float, float, float]]:
    """The models `cost` prices, with the prices cost_usd reads: input, output, cached input."""
    return {key: (m.input_price, m.output_price, m.cached_price) for key, m in models.items() if priced(m)}


def _prepare() -> ModuleType | None:
    """The C builder, told where the dataclasses keep their fields; None where it was not built. It fills a
    new record's slots the way RequestRecord.__init__ would: so the record must have no __post_init__, and
    every field left to its default must default to "off" (cache) or a new list (guards)."""
    try:
        from turnout.telemetry import _record as module
    except ImportError:
        return None
    defaults = {f.name: (f.default, f.default_factory) for f in dataclasses.fields(RequestRecord)}
    cache = defaults["cache"][0]
    if hasattr(RequestRecord, "__post_init__") or defaults["guards"][1] is not list or not isinstance(cache, str):
        return None  # the C builder would not make the record __init__ makes: build it in Python
    module.prepare(RequestRecord, RequestContext, Decision, Target, cache, estimate_prompt_tokens)
    return module


COMPILED = (_record := _prepare()) is not None  # Telemetry.start warns when False; scripts/check requires True


def _take(
    scope: MutableMapping[str, Any], endpoint: str, request_id: str, now: float, pending: list[tuple[Any, ...]]
) -> int:
    """A finished request's record inputs (build_record's arguments after `models`), read from what the
    request path left in its ASGI scope, appended to `pending`; returns how many wait there. `now` is
    time.perf_counter() at the end of the request. The reference for `take`, the same function in C."""
    latency_ms = (now - scope["turnout.t0"]) * 1000
    meter = scope.get("turnout.meter")
    error = scope.get("turnout.error")
    if meter is None:  # a JSON answer: its usage was read from the body
        usage, ttft, deltas = scope.get("turnout.usage", NO_USAGE), None, scope.get("turnout.deltas", 0)
    else:  # a stream
        usage, ttft, deltas = meter.usage(), meter.ttft_ms, meter.deltas
        error = error or meter.error
    status = scope.get("turnout.status", 500)
    ctx = scope.get("turnout.ctx")
    pending.append((request_id, scope["turnout.wall"], endpoint, status, latency_ms, ctx, error, usage, ttft, deltas))
    return len(pending)


Take = Callable[[MutableMapping[str, Any], str, str, float, list[tuple[Any, ...]]], int]
take: Take = _take if _record is None else _record.take
# Telemetry.record in C (the whole of the request path's part: `take`, then a flush or a timer), or None
# where it was not built: telemetry.Telemetry._record is the reference.
Recorder: type[Any] | None = None if _record is None else _record.Recorder
