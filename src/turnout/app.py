"""The ASGI surface: parse, authenticate, call the gateway, render. Nothing else.

Raw ASGI rather than a framework: the chat path is the hot path and every layer costs (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import orjson

from turnout.config import Settings
from turnout.errors import (
    AuthError,
    BodyTooLarge,
    MethodNotAllowed,
    PathNotFound,
    RequestError,
    TurnoutError,
    UpstreamError,
)
from turnout.gateway import Gateway
from turnout.proxy import JsonReply, StreamReply, UsageFilter, stream_error_event
from turnout.readiness import Readiness
from turnout.telemetry import build_telemetry
from turnout.telemetry.meter import completion_chars, usage_of
from turnout.telemetry.record import error_kind
from turnout.types import RequestContext, Upstream
from turnout.upstreams import build_upstream

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[["App", Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("turnout")
JSON = b"application/json"


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


# --- request parsing -------------------------------------------------------------------------


def tune_gc() -> None:
    """Everything built so far lives as long as the process: keep the collector off it, and collect young
    objects less often (measured: ~45 us of GC per request, 25 ms pauses). Run once, after start-up."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        body: bytes = msg.get("body", b"")
        size += len(body)
        if size > limit:
            raise BodyTooLarge(f"request body is larger than the limit of {limit} bytes (`server.max_body_bytes`)")
        if not msg.get("more_body"):
            return body if not chunks else b"".join([*chunks, body])
        chunks.append(body)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError("request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", code="invalid_json")
    return data


def _field_error(param: str, what: str) -> RequestError:
    return RequestError(f"`{param}` {what}", param=param, code="invalid_value")


def chat_context(
    body: dict[str, Any], header_route: str | None, request_id: str, session_header: str | None = None
) -> RequestContext:
    """Check the fields the gateway uses; everything else passes through untouched."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _field_error("model", "is required and must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _field_error("messages", "is required and must be a non-empty array")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _field_error(f"messages[{i}]", "must be an object")
        if not isinstance(msg.get("role"), str):
            raise _field_error(f"messages[{i}].role", "is required and must be a string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _field_error("stream", "must be a boolean")
    hint, source = header_route, "the `x-turnout-route` header" if header_route else None
    metadata = body.get("metadata")
    user = body.get("user")
    session = session_header or (metadata.get("session_id") if isinstance(metadata, dict) else None) or user
    if session is not None and not isinstance(session, str):
        session = str(session)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _field_error("metadata", "must be an object")
        if "route" in metadata:
            route = metadata["route"]
            if not isinstance(route, str):
                raise _field_error("metadata.route", "must be a string")
            rest = {k: v for k, v in metadata.items() if k != "route"}  # ours; the upstream never sees it
            if rest:
                body["metadata"] = rest
            else:
                del body["metadata"]
            if hint is None:
                hint, source = route, "`metadata.route`"
    return RequestContext(request_id, body, model, stream, hint, source, session)


# --- responses -----------------------------------------------------------------------------


def decision_headers(ctx: RequestContext | None, request_id: str) -> list[tuple[bytes, bytes]]:
    h = [(b"x-turnout-request-id", request_id.encode())]
    if ctx is None:
        return h
    d = ctx.decision
    if d is not None:
        h.append((b"x-turnout-router", (d.router or "").encode()))
        h.append((b"x-turnout-route", d.route.encode()))
        h.append((b"x-turnout-strategy", d.strategy.encode()))
        if d.confidence is not None:
            h.append((b"x-turnout-confidence", f"{d.confidence:.3f}".encode()))
        h.append((b"x-turnout-decision-ms", f"{d.elapsed_ms:.3f}".encode()))
    if ctx.target is not None:
        h.append((b"x-turnout-model", ctx.target.key.encode()))
    h.append((b"x-turnout-attempts", str(len(ctx.attempts)).encode()))
    return h


async def send_bytes(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], content_type: bytes = JSON
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: TurnoutError, headers: list[tuple[bytes, bytes]]) -> None:
    await send_bytes(send, exc.status, exc.body(), headers)


T = TypeVar("T")


class DisconnectWatch:
    """Cancels the current task when the client hangs up, so an upstream call or stream stops at once.

    With raw ASGI under uvicorn nothing else notices: sends after the client left are silently dropped
    and the upstream keeps generating for nobody. Most answers finish within milliseconds, so only work
    still running after AFTER_S gets a watcher task (measured: a task per request was ~5% of the
    gateway's CPU on short answers). `gone` says whether a cancellation came from here."""

    AFTER_S = 0.02

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.task = asyncio.current_task()
        self.done = False
        self.gone = False
        self._watcher: asyncio.Task[None] | None = None
        self._later = asyncio.get_running_loop().call_later(self.AFTER_S, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            msg = await self.receive()  # the body was read: what comes next is the disconnect
            if msg["type"] == "http.disconnect":
                if not self.done and self.task is not None:
                    self.gone = True
                    self.task.cancel()
                return

    def stop(self) -> None:
        self.done = True
        self._later.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work` (the upstream call, up to the answer's first byte); a client that hangs up meanwhile
    cancels it, and the request ends as ClientGone (499, `cancelled`)."""
    watch = DisconnectWatch(receive)
    try:
        return await work
    except asyncio.CancelledError:
        if watch.gone:
            raise ClientGone from None
        raise
    finally:
        watch.stop()


async def relay_stream(
    send: Send, receive: Receive, reply: StreamReply, headers: list[tuple[bytes, bytes]], measure: bool = True
) -> bool:
    """Relay SSE chunk by chunk; a client that leaves cancels the upstream request at once. With `measure`,
    the stream's meter sees every chunk (TTFT, deltas, usage: only records need it), one call each.
    Returns True when the stream was cut short (the client left, or the shutdown grace ran out)."""
    start = [(b"content-type", reply.content_type.encode()), (b"cache-control", b"no-cache"), *headers]
    try:
        await send({"type": "http.response.start", "status": 200, "headers": start})
    except BaseException:
        reply.close()  # the upstream connection is closed, never left holding its pool slot
        raise
    watch = DisconnectWatch(receive)
    read, chunk = reply.read, reply.first
    see = reply.meter.see if measure else None
    if see is not None and reply.usage_asked:
        reply.meter.sized = True  # usage will come: sum the bytes, count no deltas (StreamMeter)
    strip = UsageFilter() if reply.strip_usage else None  # the meter sees the usage event; the client not
    try:
        while chunk:
            if see is not None:
                see(chunk)
            out = chunk if strip is None else strip(chunk)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            try:
                chunk = await read()
            except UpstreamError as exc:  # after the first byte: end the stream with an error event
                if strip is not None:
                    strip.rest = b""  # an event cut short is not passed on
                await send({"type": "http.response.body", "body": reply.failed(exc), "more_body": True})
                break
        if strip is not None and strip.rest:  # whatever followed the last blank line, as it came
            await send({"type": "http.response.body", "body": strip.rest, "more_body": True})
        watch.done = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        reply.close()
        if watch.gone:
            return True
        # The server is stopping and the grace period is over: end the stream cleanly, not with a reset.
        event = stream_error_event("the gateway is shutting down; the stream was cut short", "gateway_shutdown",
                                   "server_error")  # fmt: skip
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True
    except BaseException:
        reply.close()
        raise
    finally:
        watch.stop()
    return False


# --- the app -------------------------------------------------------------------------------


class App:
    """The turnout ASGI application. Build it with `create_app`; clients and probes start in lifespan."""

    def __init__(self, settings: Settings, source: str, upstreams: dict[str, Upstream] | None = None) -> None:
        self.settings = settings
        self.source = source
        self.upstreams = upstreams or {name: build_upstream(name, cfg) for name, cfg in settings.upstreams.items()}
        self.gateway = Gateway(settings, self.upstreams)
        self.readiness = Readiness(settings, source, self.gateway)
        self.telemetry = build_telemetry(settings)
        self.tune_gc = False  # `turnout serve` turns it on: it owns the process
        self._keys = [k.encode() for k in settings.auth.keys]
        self._limit = settings.server.max_body_bytes
        self._routes: dict[str, dict[str, Handler]] = {}
        for method, path, handler, _ in ROUTES:
            self._routes.setdefault(path, {})[method] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        wall = time.time()
        # 32 hex digits: milliseconds since the epoch, then 80 random bits. Time-ordered ids sort like the
        # requests and keep the audit log's request_id index append-only (random ids cost ~3 us more
        # per row there); uuid4().hex costs ~3x more and says nothing more.
        request_id = f"{int(wall * 1000):012x}{os.urandom(10).hex()}"
        scope["turnout.request_id"] = request_id
        scope["turnout.t0"] = time.perf_counter()
        scope["turnout.wall"] = wall
        methods = self._routes.get(scope["path"].rstrip("/") or "/")
        try:
            await self._dispatch(scope, receive, send, methods, request_id)
        finally:
            endpoint = scope.get("turnout.endpoint")
            if endpoint is not None and self.telemetry.enabled:  # off: no record at all
                # what the request left in its scope is read in one call (record.Recorder), the record
                # built later, in a batch (Telemetry.flush)
                self.telemetry.record(scope, endpoint, request_id)

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, methods: dict[str, Handler] | None, request_id: str
    ) -> None:
        try:
            if methods is None:
                raise PathNotFound(f"no such endpoint: {scope['method']} {scope['path']}")
            handler = methods.get(scope["method"])
            if handler is None:
                allowed = ", ".join(sorted(methods))
                raise MethodNotAllowed(f"{scope['path']} accepts {allowed}, not {scope['method']}")
            await handler(self, scope, receive, send)
        except TurnoutError as exc:
            scope["turnout.status"], scope["turnout.error"] = exc.status, error_kind(exc)
            await send_error(send, exc, decision_headers(scope.get("turnout.ctx"), request_id))
        except ClientGone:
            scope["turnout.status"], scope["turnout.error"] = 499, "cancelled"
            return
        except asyncio.CancelledError:
            # The grace period after SIGTERM ran out before this request was answered (streams that
            # already started end themselves in relay_stream).
            if scope.get("turnout.started"):
                raise
            gone = TurnoutError("the gateway is shutting down; retry the request", code="gateway_shutdown")
            gone.status, gone.type = 503, "server_error"
            scope["turnout.status"], scope["turnout.error"] = 503, "cancelled"
            await send_error(send, gone, decision_headers(scope.get("turnout.ctx"), request_id))
        except Exception:  # never a stack trace to the client; the log gets the type only
            log.exception("internal error handling request %s", request_id)
            internal = TurnoutError("internal error in the gateway; see its log for request " + request_id)
            scope["turnout.status"], scope["turnout.error"] = 500, "internal"
            await send_error(send, internal, decision_headers(scope.get("turnout.ctx"), request_id))

    def authenticate(self, scope: Scope) -> None:
        if not self._keys:
            return
        bearer = other = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                bearer = value[7:].strip()
            elif name in (b"x-api-key", b"api-key"):
                other = value.strip()
        token = bearer or other
        if not token:
            raise AuthError("missing API key: send `Authorization: Bearer <key>`")
        if not any(hmac.compare_digest(token, key) for key in self._keys):
            raise AuthError("invalid API key")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                    await self.telemetry.start()
                except Exception as exc:  # a broken bank, encoder or audit file: refuse to start, say why
                    log.error("turnout cannot start: %s", getattr(exc, "message", None) or repr(exc))
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.readiness.start()
                if self.tune_gc:
                    tune_gc()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.readiness.stop()
                await self.gateway.close()
                await self.telemetry.close()
                for upstream in self.upstreams.values():
                    await upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


# --- handlers ------------------------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def chat_completions(app: App, scope: Scope, receive: Receive, send: Send) -> None:
    scope["turnout.endpoint"] = "chat"
    app.authenticate(scope)
    body = parse_json_object(await read_body(receive, app._limit))
    request_id = scope["turnout.request_id"]
    ctx = chat_context(body, _header(scope, b"x-turnout-route"), request_id, _header(scope, b"x-turnout-session"))
    ctx.started = scope["turnout.t0"]
    scope["turnout.ctx"] = ctx
    outcome = await until_disconnect(receive, app.gateway.handle(ctx))
    headers = decision_headers(ctx, request_id)
    reply = outcome.reply
    measure = app.telemetry.enabled  # usage and stream metering feed records only
    if isinstance(reply, JsonReply):
        scope["turnout.status"] = reply.status
        if measure:
            usage = scope["turnout.usage"] = usage_of(reply.body)
            if usage[1] is None:  # no reported usage: estimate the answer's tokens from its text (~4 chars each)
                scope["turnout.deltas"] = completion_chars(reply.body) // 4
        await send_bytes(send, reply.status, reply.body, headers, reply.content_type.encode())
    else:
        scope["turnout.started"] = True
        scope["turnout.status"], scope["turnout.meter"] = 200, reply.meter
        streams = app.telemetry.streams
        streams.active += 1
        try:
            if await relay_stream(send, receive, reply, headers, measure):
                scope["turnout.error"] = "cancelled"
        finally:
            streams.active -= 1


async def route_decision(app: App, scope: Scope, receive: Receive, send: Send) -> None:
    scope["turnout.endpoint"] = "route"
    app.authenticate(scope)
    body = parse_json_object(await read_body(receive, app._limit))
    if "messages" not in body and isinstance(body.get("text"), str):
        body["messages"] = [{"role": "user", "content": body.pop("text")}]
    body.setdefault("model", next(iter(app.gateway.routers), next(iter(app.settings.routes))))
    request_id = scope["turnout.request_id"]
    ctx = chat_context(body, _header(scope, b"x-turnout-route"), request_id, _header(scope, b"x-turnout-session"))
    scope["turnout.ctx"] = ctx
    out = await app.gateway.explain(ctx)
    scope["turnout.status"] = 200
    await send_bytes(send, 200, orjson.dumps(out), decision_headers(ctx, request_id))


async def list_models(app: App, scope: Scope, receive: Receive, send: Send) -> None:
    app.authenticate(scope)
    s = app.settings
    data: list[dict[str, Any]] = []
    for name, router in s.routers.items():
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "turnout", "kind": "router",
                     "routes": router.routes, "description": router.description})  # fmt: skip
    for name, route in s.routes.items():
        entry: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "turnout", "kind": "route",
                                 "description": route.description}  # fmt: skip
        if s.expose_models:
            entry["targets"] = [s.models[t].name for t in route.targets]
        data.append(entry)
    body = orjson.dumps({"object": "list", "data": data})
    await send_bytes(send, 200, body, decision_headers(None, scope["turnout.request_id"]))


async def health(app: App, scope: Scope, receive: Receive, send: Send) -> None:
    await send_bytes(send, 200, b'{"status":"ok"}', decision_headers(None, scope["turnout.request_id"]))


async def ready(app: App, scope: Scope, receive: Receive, send: Send) -> None:
    report = await app.readiness.report()
    status = 200 if report["ready"] else 503
    await send_bytes(send, status, orjson.dumps(report), decision_headers(None, scope["turnout.request_id"]))


async def metrics(app: App, scope: Scope, receive: Receive, send: Send) -> None:
    page = app.telemetry.exposition()
    if page is None:
        raise PathNotFound("metrics are off (`telemetry.metrics.enabled: false`)")
    body, content_type = page
    await send_bytes(send, 200, body, decision_headers(None, scope["turnout.request_id"]), content_type.encode())


async def usage(app: App, scope: Scope, receive: Receive, send: Send) -> None:
    app.authenticate(scope)
    from turnout.usage import usage_report  # the audit store's summary; imported on first use

    query = scope.get("query_string", b"").decode("latin-1")
    body = orjson.dumps(await usage_report(app.settings, query))
    await send_bytes(send, 200, body, decision_headers(None, scope["turnout.request_id"]))


ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", "/health", health, "liveness; never needs a key"),
    ("GET", "/ready", ready, "config, routers, routes, upstream reachability; 503 when a route cannot be served"),
    ("GET", "/v1/models", list_models, "routers and routes clients may ask for"),
    ("POST", "/v1/chat/completions", chat_completions, "OpenAI chat completions, JSON or SSE"),
    ("POST", "/v1/route", route_decision, "the routing decision for a chat body, nothing forwarded"),
    ("GET", "/metrics", metrics, "Prometheus metrics (no auth, like /health)"),
    ("GET", "/usage", usage, "requests, tokens, cost and savings by day, router, route and model"),
]  # fmt: skip


def create_app(settings: Settings, source: str = "settings object") -> App:
    return App(settings, source)
