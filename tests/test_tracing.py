"""OpenTelemetry traces: real requests through a gateway, exported over OTLP/HTTP to a real local receiver."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import UPSTREAM_KEY, GatewayFactory, GatewayThread, base_config, sdk
from turnout.config import validate
from turnout.telemetry.tracing import TracingSink, traces_endpoint
from turnout.types import Attempt, RequestRecord

SECRET = "the-launch-code-is-0000"
HI = [{"role": "user", "content": SECRET}]
ERROR = PbStatus.STATUS_CODE_ERROR


class Collector:
    """A tiny OTLP/HTTP receiver on 127.0.0.1: keeps every export request it is sent, as bytes."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append((self.path, body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"  # bare: the sink adds /v1/traces
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def raw(self) -> bytes:
        return b"".join(body for _, body in self.posts)

    def spans(self) -> list[Span]:
        out = []
        for path, body in self.posts:
            assert path == "/v1/traces"
            req = ExportTraceServiceRequest.FromString(body)
            for rs in req.resource_spans:
                resource = {a.key: value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out += [Span.of(s, resource) for s in ss.spans]
        return out

    def traces(self) -> dict[str, Trace]:
        """Every trace, by its root span's name."""
        spans = self.spans()
        roots = [s for s in spans if not s.parent]
        out = {}
        for root in roots:
            children = sorted((s for s in spans if s.trace_id == root.trace_id and s.parent), key=lambda s: s.start)
            assert all(c.parent == root.span_id for c in children), "children hang off the root"
            out[root.name] = Trace(root, children)
        assert sum(1 + len(t.children) for t in out.values()) == len(spans)
        return out


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class Span:
    name: str
    trace_id: bytes
    span_id: bytes
    parent: bytes
    kind: int
    start: int
    end: int
    status: int
    status_message: str
    attrs: dict[str, Any]
    resource: dict[str, Any]

    @classmethod
    def of(cls, s: PbSpan, resource: dict[str, Any]) -> Span:
        attrs = {a.key: value(a.value) for a in s.attributes}
        return cls(s.name, s.trace_id, s.span_id, s.parent_span_id, s.kind, s.start_time_unix_nano,
                   s.end_time_unix_nano, s.status.code, s.status.message, attrs, resource)  # fmt: skip


@dataclass
class Trace:
    root: Span
    children: list[Span]

    def named(self, name: str) -> list[Span]:
        return [c for c in self.children if c.name == name]


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


def traced(make_gateway: GatewayFactory, collector: Collector, tmp_path: Path, **sections: Any) -> GatewayThread:
    tracing = {"enabled": True, "endpoint": collector.url}
    return make_gateway(telemetry={"tracing": tracing}, runtime_dir=str(tmp_path), **sections)


def test_chat_request_is_one_trace_with_decide_and_attempt_spans(
    make_gateway: GatewayFactory, collector: Collector, tmp_path: Path
) -> None:
    gw = traced(make_gateway, collector, tmp_path)
    with sdk(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=HI)
    request_id = raw.headers["x-turnout-request-id"]
    gw.stop()  # the lifespan shutdown flushes the batch processor

    t = collector.traces()["chat lite"]
    root, (decide, attempt) = t.root, t.children
    assert (root.kind, decide.kind, attempt.kind) == (PbSpan.SPAN_KIND_SERVER, PbSpan.SPAN_KIND_INTERNAL,
                                                      PbSpan.SPAN_KIND_CLIENT)  # fmt: skip
    assert (decide.name, attempt.name) == ("decide", "chat lite-model")
    assert root.resource["service.name"] == "turnout"
    assert root.start == decide.start <= decide.end <= attempt.start <= attempt.end <= root.end
    assert root.attrs == {
        "turnout.request_id": request_id,
        "turnout.router": "auto",
        "turnout.route": "lite",
        "turnout.strategy": "fallback",
        "turnout.model": "lite-model",
        "turnout.upstream": "fake",
        "turnout.status": 200,
        "turnout.attempts": 1,
        "turnout.stream": False,
        "http.response.status_code": 200,
        "http.route": "/v1/chat/completions",
    }
    assert decide.attrs["turnout.strategy"] == "fallback"
    assert {k: attempt.attrs[k] for k in attempt.attrs if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "lite-model",
        "gen_ai.usage.input_tokens": 8,
        "gen_ai.usage.output_tokens": 7,
    }
    assert attempt.status != ERROR and root.status != ERROR
    assert SECRET.encode() not in collector.raw and UPSTREAM_KEY.encode() not in collector.raw
    assert b"fake-lite" not in collector.raw  # the upstream's model id stays out too: config names only


def test_failed_attempt_is_an_error_span_before_the_fallback_that_answered(
    make_gateway: GatewayFactory, collector: Collector, tmp_path: Path
) -> None:
    gw = traced(make_gateway, collector, tmp_path, routes={"deep": {"targets": ["m-500", "lite-model"]},
                "lite": {"targets": ["m-500"]}}, proxy={"attempts_per_target": 1})  # fmt: skip
    with sdk(gw) as client:
        client.chat.completions.create(model="deep", messages=HI)
    assert httpx.post(gw.url + "/v1/chat/completions", json={"model": "lite", "messages": HI}).status_code == 502
    gw.stop()

    traces = collector.traces()
    recovered, failed = traces["chat deep"], traces["chat lite"]
    _, broken, answered = recovered.children
    assert (broken.name, answered.name) == ("chat m-500", "chat lite-model")
    assert broken.end <= answered.start
    assert (broken.status, broken.status_message) == (ERROR, "http_500")
    assert (broken.attrs["error.type"], broken.attrs["http.response.status_code"]) == ("http_500", 500)
    assert (broken.attrs["turnout.attempt"], answered.attrs["turnout.attempt"]) == (1, 2)
    assert "gen_ai.usage.input_tokens" not in broken.attrs and answered.attrs["gen_ai.usage.input_tokens"] == 8
    assert answered.status != ERROR and recovered.root.status != ERROR
    assert recovered.root.attrs["turnout.attempts"] == 2

    assert (failed.root.status, failed.root.attrs["error.type"], failed.root.attrs["turnout.status"]) == (
        ERROR, "upstream_5xx", 502)  # fmt: skip
    assert [c.status for c in failed.named("chat m-500")] == [ERROR]
    assert SECRET.encode() not in collector.raw


def test_streamed_answer_span_lasts_until_the_stream_ends(
    make_gateway: GatewayFactory, collector: Collector, tmp_path: Path
) -> None:
    cached = {"lite-model": {"upstream": "fake", "name": "fake-lite?cached=6"}}  # 6 of 8 prompt tokens cached
    gw = traced(make_gateway, collector, tmp_path, models=cached)
    with sdk(gw) as client:
        list(client.chat.completions.create(model="lite", messages=HI, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    gw.stop()

    t = collector.traces()["chat lite"]
    [attempt] = t.named("chat lite-model")
    assert t.root.attrs["turnout.stream"] is True and t.root.attrs["turnout.ttft_ms"] > 0
    assert attempt.end == t.root.end  # the upstream sent until the relay finished
    assert 0 < attempt.attrs["turnout.first_chunk_ms"] <= t.root.attrs["turnout.ttft_ms"]
    assert (attempt.attrs["gen_ai.usage.input_tokens"], attempt.attrs["gen_ai.usage.output_tokens"]) == (8, 4)
    assert attempt.attrs["gen_ai.usage.cache_read.input_tokens"] == 6


def test_route_endpoint_trace_has_a_decide_span_and_no_attempts(
    make_gateway: GatewayFactory, collector: Collector, tmp_path: Path
) -> None:
    gw = traced(make_gateway, collector, tmp_path)
    assert httpx.post(gw.url + "/v1/route", json={"model": "auto", "messages": HI}).status_code == 200
    gw.stop()

    t = collector.traces()["route lite"]
    assert [c.name for c in t.children] == ["decide"]
    assert "gen_ai.operation.name" not in t.root.attrs and t.root.attrs["http.route"] == "/v1/route"
    assert SECRET.encode() not in collector.raw


# --- the sink alone, with the SDK's in-memory exporter ---------------------------------------


def record(**fields: Any) -> RequestRecord:
    rec = RequestRecord("r1", 1_700_000_000.0, "chat", 200, router="auto", route="lite", model="lite-model",
                        upstream="fake", strategy="fallback", decision_ms=0.5, latency_ms=10.0)  # fmt: skip
    rec.attempts = [Attempt("lite-model", None, 200, 8.0, 1.0)]
    for k, v in fields.items():
        setattr(rec, k, v)
    return rec


async def sink_with(exporter: InMemorySpanExporter, **tracing: Any) -> TracingSink:
    config = base_config("http://127.0.0.1:9/v1")
    config["telemetry"] = {"tracing": {"enabled": True, **tracing}}
    sink = TracingSink(validate(config, {}), exporter)
    await sink.start()
    return sink


def test_sink_builds_spans_with_the_record_timestamps() -> None:
    exporter = InMemorySpanExporter()

    async def run() -> None:
        sink = await sink_with(exporter)
        sink.emit(record())
        await sink.close()
        sink.emit(record())  # after close: nothing, no error

    asyncio.run(run())
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == ["chat lite", "chat lite-model", "decide"]
    root, attempt = spans["chat lite"], spans["chat lite-model"]
    assert (root.start_time, root.end_time) == (1_700_000_000_000_000_000, 1_700_000_000_010_000_000)
    assert (attempt.start_time, attempt.end_time) == (1_700_000_000_001_000_000, 1_700_000_000_009_000_000)
    assert spans["decide"].end_time == 1_700_000_000_000_500_000


def test_sample_ratio_zero_exports_nothing() -> None:
    exporter = InMemorySpanExporter()

    async def run() -> None:
        sink = await sink_with(exporter, sample_ratio=0.0)
        sink.emit(record())
        await sink.close()

    asyncio.run(run())
    assert exporter.get_finished_spans() == ()


def test_a_bare_collector_address_gets_the_traces_path() -> None:
    assert traces_endpoint("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_endpoint("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_endpoint("https://otel.example/custom/v1/traces") == "https://otel.example/custom/v1/traces"
    assert traces_endpoint(None) is None  # the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT


def test_tracing_off_never_loads_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from turnout.app import create_app\n"
        "from turnout.config import validate\n"
        "cfg = {'upstreams': {'u': {'base_url': 'http://127.0.0.1:9/v1'}}, 'models': {'m': {'upstream': 'u',"
        " 'name': 'x'}}, 'routes': {'r': {'targets': ['m']}}}\n"
        "create_app(validate(cfg, {}))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'turnout.telemetry.tracing'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
