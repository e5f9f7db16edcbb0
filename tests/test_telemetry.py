"""One RequestRecord per finished request, with what happened and never any text."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import GatewayFactory, GatewayThread, UpstreamThread, base_config, sdk
from turnout.config import ModelConfig, default_config_tree, validate
from turnout.proxy import UsageFilter
from turnout.telemetry import BATCH, DELAY_S, build_telemetry
from turnout.telemetry import record as record_module
from turnout.telemetry.audit import AuditSink
from turnout.telemetry.meter import Metering, StreamMeter, Usage, _usage_of, completion_chars, last_events, usage_of
from turnout.telemetry.metrics import MetricsSink
from turnout.types import RequestRecord

SECRET = "the-launch-code-is-0000"
HI = [{"role": "user", "content": SECRET}]


class Collect:
    """A real sink that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def emit(self, record: RequestRecord) -> None:
        self.records.append(record)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def collecting(gw: GatewayThread) -> Collect:
    sink = Collect()
    gw.app.telemetry.add(sink)
    return sink


def wait_for(sink: Collect, n: int) -> list[RequestRecord]:
    deadline = time.monotonic() + 5
    while len(sink.records) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return sink.records


def test_json_request_records_decision_usage_cost_and_latency(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(models={"lite-model": {"upstream": "fake", "name": "fake-lite", "input_price": 1.0,
                                             "output_price": 2.0}})  # fmt: skip
    sink = collecting(gw)
    with sdk(gw) as client:
        client.chat.completions.create(model="auto", messages=HI)
    [rec] = wait_for(sink, 1)
    assert (rec.endpoint, rec.status, rec.error, rec.stream) == ("chat", 200, None, False)
    assert (rec.router, rec.route, rec.strategy, rec.model, rec.upstream) == ("auto", "lite", "fallback", "lite-model",
                                                                               "fake")  # fmt: skip
    assert (rec.prompt_tokens, rec.completion_tokens, rec.tokens_estimated) == (8, 7, False)
    assert rec.cost_usd == pytest.approx((8 * 1.0 + 7 * 2.0) / 1e6)
    assert rec.latency_ms > 0 and rec.decision_ms is not None and len(rec.attempts) == 1
    assert SECRET not in repr(rec)


def test_stream_records_ttft_and_reported_usage(gateway: GatewayThread, client: openai.OpenAI) -> None:
    sink = collecting(gateway)
    list(client.chat.completions.create(model="deep", messages=HI, stream=True,
                                        stream_options={"include_usage": True}))  # fmt: skip
    list(client.chat.completions.create(model="deep", messages=HI, stream=True))
    first, second = wait_for(sink, 2)
    assert first.stream and first.status == 200 and first.ttft_ms is not None and 0 < first.ttft_ms <= first.latency_ms
    assert (first.prompt_tokens, first.completion_tokens, first.tokens_estimated) == (8, 4, False)
    assert second.completion_tokens == 4 and second.tokens_estimated  # counted from the content deltas


def stream_usage_gateway(make_gateway: GatewayFactory, upstream: UpstreamThread) -> GatewayThread:
    fake = {**base_config(upstream.url)["upstreams"]["fake"], "stream_usage": True}
    return make_gateway(upstreams={"fake": fake, "other": {"base_url": upstream.url}},
                        models={"plain": {"upstream": "other", "name": "fake-plain"}},
                        routes={"plain": {"targets": ["plain"]}})  # fmt: skip


def test_stream_usage_is_asked_for_recorded_and_taken_out_of_the_clients_stream(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    """`stream_usage: true`: a client that did not ask for usage gets the stream it asked for (every chunk
    has a choice), and the record has the upstream's own token counts."""
    gw = stream_usage_gateway(make_gateway, upstream)
    sink = collecting(gw)
    upstream.clear()
    with sdk(gw) as client:
        chunks = list(client.chat.completions.create(model="deep", messages=HI, stream=True))
        asked = list(client.chat.completions.create(model="deep", messages=HI, stream=True,
                                                    stream_options={"include_usage": True}))  # fmt: skip
        plain = list(client.chat.completions.create(model="plain", messages=HI, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 tok3 "
    assert not asked[-1].choices and asked[-1].usage is not None  # asked for: passed on as it came
    assert asked[-1].usage.completion_tokens == 4
    assert all(c.choices for c in plain)
    sent = [r["body"].get("stream_options") for r in upstream.requests]
    assert sent == [{"include_usage": True}, {"include_usage": True}, None]  # not on an upstream without it
    records = wait_for(sink, 3)
    assert [(r.prompt_tokens, r.completion_tokens, r.tokens_estimated) for r in records] == [
        (8, 4, False), (8, 4, False), (records[2].prompt_tokens, 4, True),
    ]  # fmt: skip


def test_usage_filter_takes_out_only_the_usage_event_even_split_over_chunks() -> None:
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":4}}\n\n'
    content = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    spaced = b'data: {"id": "x", "choices": [], "usage": {"prompt_tokens": 8}}\r\n\r\n'
    done = b"data: [DONE]\n\n"
    stream = content + content + usage + done
    for cut in range(1, len(stream)):  # every place a chunk boundary can fall
        strip = UsageFilter()
        out = strip(stream[:cut]) + strip(stream[cut:]) + strip.rest
        assert out == content + content + done, cut
    strip = UsageFilter()
    assert strip(content[:10]) == b"" and strip.rest == content[:10]  # no event ended yet: it waits
    assert strip(content[10:] + spaced + done) == content + done
    no_usage = b'data: {"id":"x","choices":[]}\n\n'  # an empty choice list without usage is not ours
    assert UsageFilter()(no_usage + done) == no_usage + done
    assert UsageFilter()(b"data: partial") == b""
    # a whole stream in one chunk (under load): only the usage event goes, wherever it is
    assert UsageFilter()(content * 16 + no_usage + usage + done) == content * 16 + no_usage + done
    crlf = content.replace(b"\n\n", b"\r\n\r\n")
    assert UsageFilter()(crlf * 3 + spaced + crlf) == crlf * 4
    assert UsageFilter()(usage + content + usage + done) == content + done


def test_failures_record_a_bounded_reason(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = make_gateway(routes={"lite": {"targets": ["m-500"]}, "deep": {"targets": ["m-400"]}},
                      proxy={"attempts_per_target": 1})  # fmt: skip
    sink = collecting(gw)
    chat = gw.url + "/v1/chat/completions"
    httpx.post(chat, json={"model": "lite", "messages": HI})
    httpx.post(chat, json={"model": "deep", "messages": HI})
    httpx.post(chat, content=b"{nope")
    httpx.post(chat, json={"model": "nope", "messages": HI})
    recs = wait_for(sink, 4)
    assert [(r.status, r.error) for r in recs] == [(502, "upstream_5xx"), (400, "upstream_4xx"),
                                                   (400, "parse_error"), (404, "parse_error")]  # fmt: skip
    assert recs[0].model == "m-500" and recs[0].attempts[0].error == "http_500"
    assert all(SECRET not in repr(r) for r in recs)


def test_a_client_that_leaves_mid_stream_is_recorded_as_cancelled(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(models={"long": {"upstream": "fake", "name": "fake?chunks=200&delay_ms=20"}},
                      routes={"lite": {"targets": ["long"]}})  # fmt: skip
    sink = collecting(gw)
    with httpx.stream("POST", gw.url + "/v1/chat/completions",
                      json={"model": "lite", "messages": HI, "stream": True}) as r:  # fmt: skip
        for _ in r.iter_raw():
            break
    [rec] = wait_for(sink, 1)
    assert (rec.status, rec.error) == (200, "cancelled")


def test_stream_meter_reads_bytes_without_keeping_them() -> None:
    m = StreamMeter(time.perf_counter())
    m.see(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')
    assert m.first_content is None
    m.see(b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: {"choices":[{"delta":{"content":"!"}}]}\n\n')
    m.see(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\ndata: [DONE]\n\n')
    assert m.deltas == 2 and m.ttft_ms is not None and m.usage() == (3, 2, None)
    assert usage_of(b'{"usage":{"prompt_tokens":1,"completion_tokens":2}}') == (1, 2, None)
    assert usage_of(b"not json, usage") == (None, None, None)


@pytest.mark.parametrize("usage_of", [usage_of, _usage_of], ids=["compiled", "python"])
def test_usage_is_read_from_the_usage_object_only(usage_of: Callable[..., Usage]) -> None:
    """The body is searched, not parsed: keys inside answer text are escaped and never match. Both readers:
    the C one turnout runs (where it was built) and the Python one it falls back to."""
    trap = '{\\"usage\\": {\\"prompt_tokens\\": 999, \\"completion_tokens\\": 999}}'
    compact = ('{"id":"c1","choices":[{"message":{"content":"' + trap + '"}}],'
               '"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,'
               '"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}},'
               '"system_fingerprint":"fp"}')  # fmt: skip
    assert usage_of(compact.encode()) == (12, 5, 4)  # 4 of the 12 prompt tokens came from the upstream's cache
    spaced = '{"usage": {"prompt_tokens": 3, "completion_tokens": 4}, "choices": [{"message": {"content": "x"}}]}'
    assert usage_of(spaced.encode()) == (3, 4, None)
    none = (None, None, None)
    assert usage_of(b'{"choices":[{"message":{"content":"' + trap.encode() + b'"}}],"usage":null}') == none
    assert usage_of(b'{"choices":[{"message":{"content":"' + trap.encode() + b'"}}]}') == none
    assert usage_of(b'{"usage":{"total_tokens":9}}') == (None, None, None)
    assert usage_of(b'{"usage": {"completion_tokens": 4, "total_tokens": 7, "prompt_tokens": 3}}') == (3, 4, None)
    assert usage_of(b'{"usage":{"prompt_tokens":2}}') == (2, None, None)
    deepseek = b'{"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_cache_hit_tokens":8,'
    deepseek += b'"prompt_cache_miss_tokens":2}}'  # DeepSeek's names
    assert usage_of(deepseek) == (10, 5, 8)
    stream = (b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":9,'
              b'"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":0}}}\n\ndata: [DONE]\n\n')  # fmt: skip
    assert usage_of(stream, last_events(stream)) == (9, 1, 0)


def test_cached_prompt_tokens_cost_the_cached_input_price_or_else_the_input_price() -> None:
    models = {
        "cheap-cache": ModelConfig(upstream="u", name="a", input_price=2.0, output_price=8.0, cached_input_price=0.5),
        "no-cache-price": ModelConfig(upstream="u", name="b", input_price=2.0, output_price=8.0),
        "free-cache": ModelConfig(upstream="u", name="c", input_price=2.0, cached_input_price=0.0),
    }
    assert models["cheap-cache"].cost_usd(1000, 100, 800) == pytest.approx((200 * 2.0 + 800 * 0.5 + 100 * 8.0) / 1e6)
    assert models["no-cache-price"].cost_usd(1000, 100, 800) == models["no-cache-price"].cost_usd(1000, 100)
    assert models["free-cache"].cost_usd(1000, 0, 1000) == 0.0
    assert models["cheap-cache"].cost_usd(10, 0, 50) == pytest.approx(10 * 0.5 / 1e6)  # more cached than sent: all


def test_stream_meter_counts_deltas_in_spaced_json_tool_calls_and_events_sharing_a_chunk() -> None:
    m = StreamMeter(time.perf_counter())
    m.see(b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\n\n')
    assert m.first_content is None and m.deltas == 0
    m.see(b'data: {"choices": [{"delta": {"reasoning_content": "hm"}}]}\n\n'
          b'data: {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "{\\"a\\""}}]}}]}\n\n')  # fmt: skip
    m.see(b'data: {"choices": [{"delta": {"content": "ok"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}'
          b"\n\ndata: [DONE]\n\n")  # fmt: skip
    assert m.deltas == 3 and m.first_content is not None and m.usage() == (5, 3, None)


def test_answer_text_gives_a_token_estimate_when_usage_is_absent() -> None:
    body = b'{"choices":[{"message":{"content":"12345678","tool_calls":[{"function":{"arguments":"{}"}}]}}]}'
    assert completion_chars(body) == 10
    assert completion_chars(b"<html>") == 0


# --- batching: records are built and handed over in batches (Telemetry.flush) ------------------


def inputs(n: int) -> tuple[object, ...]:
    """What the request path queues for a request that failed before any decision (no context)."""
    return (f"req-{n}", time.time(), "chat", 400, 1.5, None, "parse_error", (None, None, None), None, 0)


def test_records_wait_for_a_batch_or_the_delay_then_reach_every_sink() -> None:
    first, second = Collect(), Collect()
    telemetry = build_telemetry(validate(default_config_tree({}), {}))
    telemetry.sinks[:] = [first, second]

    async def run() -> None:
        for i in range(BATCH - 1):
            telemetry.submit(inputs(i))
        assert first.records == []  # not yet: neither a full batch nor the delay
        telemetry.submit(inputs(BATCH - 1))
        assert len(first.records) == len(second.records) == BATCH  # a full batch goes at once
        telemetry.submit(inputs(BATCH))
        assert len(first.records) == BATCH
        await asyncio.sleep(DELAY_S * 3)
        assert len(first.records) == BATCH + 1  # a lone record goes after the delay

    asyncio.run(run())
    rec = first.records[0]
    assert (rec.request_id, rec.status, rec.error, rec.latency_ms) == ("req-0", 400, "parse_error", 1.5)
    assert [r.request_id for r in first.records] == [r.request_id for r in second.records]


def ended(n: int) -> dict[str, object]:
    """The ASGI scope of a request that failed before any decision, as the request path leaves it."""
    return {"turnout.t0": time.perf_counter() - 0.002, "turnout.wall": time.time(), "turnout.status": 400,
            "turnout.error": "parse_error", "turnout.n": n}  # fmt: skip


@pytest.mark.parametrize("kind", ["compiled", "python"])
def test_the_request_paths_record_call_batches_as_submit_does(kind: str) -> None:
    """`Telemetry.record` (record.Recorder in C, or Telemetry._record) queues the scope's inputs, flushes a
    full batch at once, and arms the delay at the first inputs after a flush, once."""
    if kind == "compiled" and record_module.Recorder is None:
        pytest.skip("the C extension was not built")
    sink = Collect()
    telemetry = build_telemetry(validate(default_config_tree({}), {}))
    telemetry.sinks[:] = [sink]
    call = telemetry.record if kind == "compiled" else telemetry._record
    assert (type(call).__name__ == "Recorder") == (kind == "compiled")

    async def run() -> None:
        call(ended(0), "chat", "req-0")
        timer = telemetry._timer
        assert timer is not None and sink.records == []  # armed by the first inputs
        for i in range(1, BATCH - 1):
            call(ended(i), "chat", f"req-{i}")
        assert telemetry._timer is timer and sink.records == []  # armed once
        call(ended(BATCH - 1), "chat", f"req-{BATCH - 1}")
        assert len(sink.records) == BATCH and telemetry._timer is None  # a full batch goes at once
        call(ended(BATCH), "chat", "req-last")
        assert telemetry._timer is not None
        await asyncio.sleep(DELAY_S * 3)
        assert len(sink.records) == BATCH + 1  # a lone record goes after the delay

    asyncio.run(run())
    first, last = sink.records[0], sink.records[-1]
    assert (first.request_id, first.status, first.error, first.endpoint) == ("req-0", 400, "parse_error", "chat")
    assert 1.5 < first.latency_ms < 1000 and last.request_id == "req-last"
    call(ended(0), "chat", "no-loop")  # no running loop: handed over at once
    assert sink.records[-1].request_id == "no-loop" and telemetry._pending == []


def test_the_compiled_recorder_refuses_bad_calls_and_is_collected() -> None:
    Recorder = record_module.Recorder
    if Recorder is None:
        pytest.skip("the C extension was not built")
    with pytest.raises(TypeError):
        Recorder((), 128, time.perf_counter, lambda: None, lambda: None)  # pending must be a list
    telemetry = build_telemetry(validate(default_config_tree({}), {}))
    with pytest.raises(TypeError):
        telemetry.record(ended(0), "chat")  # type: ignore[call-arg]
    with pytest.raises(KeyError):
        telemetry.record({}, "chat", "r")  # no `turnout.t0`: not a scope the request path left
    assert telemetry._pending == []
    gone = weakref.ref(telemetry)
    del telemetry  # a cycle through the recorder's bound methods: the collector must see it
    gc.collect()
    assert gone() is None


def test_the_batch_delay_is_set_in_config() -> None:
    tree = default_config_tree({})
    tree["telemetry"] = {"batch_delay_s": 0.4}
    telemetry = build_telemetry(validate(tree, {}))
    sink = Collect()
    telemetry.sinks[:] = [sink]

    async def run() -> None:
        telemetry.submit(inputs(0))
        await asyncio.sleep(0.15)  # three default delays
        assert sink.records == []
        await asyncio.sleep(0.5)
        assert len(sink.records) == 1

    asyncio.run(run())


def test_close_and_a_scrape_count_the_records_still_waiting(tmp_path: Path) -> None:
    tree = default_config_tree({})
    tree["runtime_dir"] = str(tmp_path)
    tree["telemetry"] = {"audit": {"flush_s": 60}}
    telemetry = build_telemetry(validate(tree, {}))
    [metrics, audit] = telemetry.sinks
    assert isinstance(metrics, MetricsSink) and isinstance(audit, AuditSink)

    async def run() -> bytes:
        await telemetry.start()
        telemetry.submit(inputs(1))
        page = telemetry.exposition()  # rendered at once, with the waiting record in it
        telemetry.submit(inputs(2))
        await telemetry.close()  # before the delay: close hands it over, the writer stores it
        assert page is not None
        return page[0]

    page = asyncio.run(run())
    assert b'turnout_requests_total{endpoint="chat",model="none",route="none",router="none",status="400"} 1.0' in page
    assert audit.written == 2


def test_a_record_that_cannot_be_built_is_logged_and_the_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    sink = Collect()
    telemetry = build_telemetry(validate(default_config_tree({}), {}))
    telemetry.sinks[:] = [sink]
    telemetry.submit(inputs(1))  # no running loop: handed over at once
    telemetry.submit(("too", "few"))
    telemetry.submit(inputs(3))
    assert [r.request_id for r in sink.records] == ["req-1", "req-3"]
    assert "building a request record failed" in caplog.text


class Picky(Collect):
    """A real sink with `emit_many` that refuses a batch holding a record it cannot take."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def emit_many(self, records: list[RequestRecord]) -> None:
        self.batches += 1
        if any(r.status == 418 for r in records):
            raise ValueError("a record this sink cannot take")
        self.records.extend(records)

    def emit(self, record: RequestRecord) -> None:
        if record.status == 418:
            raise ValueError("a record this sink cannot take")
        self.records.append(record)


def test_a_batch_sink_that_fails_gets_the_batch_record_by_record_and_loses_only_the_bad_one() -> None:
    from turnout.telemetry import Telemetry

    picky, plain = Picky(), Collect()
    t = Telemetry([picky, plain])
    t.emit_many([RequestRecord("a", 0.0, "chat", 200), RequestRecord("b", 0.0, "chat", 418),
                 RequestRecord("c", 0.0, "chat", 200)])  # fmt: skip
    t.emit_many([RequestRecord("d", 0.0, "chat", 200)])
    assert [r.request_id for r in picky.records] == ["a", "c", "d"] and picky.batches == 2
    assert [r.request_id for r in plain.records] == ["a", "b", "c", "d"]


def test_the_audit_queue_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    from turnout.telemetry.audit import MAX_QUEUED

    tree = default_config_tree({})
    tree["runtime_dir"] = str(tmp_path)
    audit = AuditSink(validate(tree, {}))  # not started: nothing drains the queue
    batch = [RequestRecord(f"r{i}", 1.7e9, "chat", 200) for i in range(1000)]
    for _ in range(MAX_QUEUED // 1000):
        audit.emit_many(batch)
    assert audit.dropped == 0
    audit.emit_many(batch[:10])
    audit.emit(batch[0])
    assert audit.dropped == 11 and len(audit._queue) == MAX_QUEUED


def test_stream_meter_after_the_first_content_counts_non_empty_deltas_and_reads_usage_split_over_chunks() -> None:
    m = StreamMeter(time.perf_counter())
    m.see(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')
    m.see(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
    first = m.first_content
    for _ in range(20):
        m.see(b'data: {"choices":[{"delta":{"content":"b"}}]}\n\ndata: {"choices":[{"delta":{"content":"c"}}]}\n\n')
    m.see(b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n')
    m.see(b'data: {"choices":[],"usage":{"prompt_t')
    m.see(b'okens":9,"completion_tokens":41}}\n\n')
    m.see(b"data: [DONE]\n\n")
    assert m.deltas == 41 and m.first_content == first and m.usage() == (9, 41, None)
    silent = StreamMeter(time.perf_counter())
    silent.see(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: [DONE]\n\n')
    assert silent.usage() == (None, None, None) and silent.deltas == 1


def test_stream_meter_reads_a_whole_stream_that_arrives_as_one_chunk() -> None:
    events = [b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}']
    events += [b'data: {"choices": [{"delta": {"content": "t%d"}}]}' % i for i in range(16)]
    events += [b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}',
               b'data: {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 16}}',
               b"data: [DONE]"]  # fmt: skip
    m = StreamMeter(time.perf_counter())
    m.see(b"\n\n".join(events) + b"\n\n")
    assert m.deltas == 16 and m.first_content is not None and m.usage() == (8, 16, None)


def test_a_stream_that_asked_for_usage_sums_bytes_and_estimates_deltas_only_if_the_usage_never_comes() -> None:
    """`sized` (the upstream was asked for usage): no delta count; without the usage event, the deltas are
    estimated from the bytes after the first content over that event's size, whether the stream came as
    one chunk or chunk by chunk."""
    gatebench = b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":"lite",'
    events = [gatebench + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}']
    events += [gatebench + b'"choices":[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}]}' % i
               for i in range(16)]  # fmt: skip
    events += [gatebench + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', b"data: [DONE]"]
    chunks = [e + b"\n\n" for e in events]
    usage = gatebench + b'"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":16}}\n\n'

    def sized() -> Metering:
        m = StreamMeter(time.perf_counter())
        m.sized = True
        return m

    whole, apart = sized(), sized()
    whole.see(b"".join(chunks))
    for chunk in chunks:
        apart.see(chunk)
    for m in (whole, apart):
        assert m.deltas == 16 and m.usage() == (None, None, None) and m.first_content is not None
    reported = sized()
    reported.see(b"".join(chunks[:-1]) + usage + chunks[-1])
    assert reported.usage() == (8, 16, None)


def test_stream_usage_is_read_from_the_last_three_events_only() -> None:
    """The usage event comes last, before `[DONE]` (or before a finish event); earlier events are not
    searched, so a long stream without usage costs no scan of all of it."""
    content = b'data: {"choices":[{"delta":{"content":"data: x"}}]}\r\n\r\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":%d}}\r\n\r\n'
    finish = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\r\n\r\n'
    done = b"data: [DONE]\r\n\r\n"
    stream = content * 50 + usage % 50 + finish + done
    assert stream[last_events(stream) :].startswith(b'\ndata: {"choices":[],"usage"')
    assert last_events(done) == 0 and last_events(b"") == 0 and last_events(finish + done) == 0
    m = StreamMeter(time.perf_counter())
    m.see(stream)
    assert m.usage() == (4, 50, None) and m.deltas == 50
    early = StreamMeter(time.perf_counter())  # usage four events from the end: not the stream's own
    early.see(usage % 1 + content * 2 + finish + done)
    assert early.usage() == (None, None, None) and early.deltas == 2
