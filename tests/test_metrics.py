"""The Prometheus sink: real traffic through a gateway on a real socket, then `GET /metrics`, parsed with
prometheus_client's own text parser and checked by Prometheus's own `promtool check metrics` (installed
under .tools/bin by scripts/tools)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import turnout
from tests.conftest import UPSTREAM_KEY, GatewayFactory, GatewayThread, UpstreamThread, base_config, sdk
from turnout.config import validate
from turnout.telemetry.metrics import HistogramFamily, MetricsSink, status_label
from turnout.types import RequestRecord

ROOT = Path(__file__).resolve().parents[1]
SECRET = "the-launch-code-is-0000"
HI = [{"role": "user", "content": SECRET}]
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Page:
    """One scrape: the raw text and every sample, by name and label set."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.series: Series = {}
        for family in self.families:
            for s in family.samples:
                self.series[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float:
        """The value of the one series with exactly these labels; 0 when there is none."""
        return self.series.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include these."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.series.items() if n == name and want <= ls)


def promtool() -> str:
    """Prometheus's checker: .tools/bin/promtool (scripts/tools), else one on PATH. Missing, the test is
    skipped, or fails where scripts/check set TURNOUT_REQUIRE_TOOLS=1 (CI never skips it)."""
    found = ROOT / ".tools" / "bin" / "promtool"
    path = str(found) if found.is_file() else shutil.which("promtool")
    if path is None:
        message = "promtool is not installed: run `bash scripts/tools`"
        if os.environ.get("TURNOUT_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def promtool_accepts(page: Page) -> None:
    """`promtool check metrics` reads the page from stdin: it must parse it and find no lint problem (names,
    suffixes, units, HELP and TYPE lines)."""
    done = subprocess.run([promtool(), "check", "metrics"], input=page.text.encode(), capture_output=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_promtool_rejects_what_prometheus_would_not_accept() -> None:
    """The check can fail: a counter without `_total` (a lint problem) and a broken line (a parse error)."""
    for text in ("# HELP turnout_bad A counter.\n# TYPE turnout_bad counter\nturnout_bad 1\n", "turnout_bad{ 1\n"):
        done = subprocess.run([promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
        assert done.returncode != 0, text


def scrape(gw: GatewayThread) -> Page:
    r = httpx.get(gw.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    return Page(r.text)


def scrape_when(gw: GatewayThread, ready: Callable[[Page], bool]) -> Page:
    """Scrape until `ready` holds: records are emitted just after the response is sent."""
    deadline = time.monotonic() + 5
    while True:
        page = scrape(gw)
        if ready(page) or time.monotonic() > deadline:
            return page
        time.sleep(0.01)


def after(gw: GatewayThread, requests: int) -> Page:
    return scrape_when(gw, lambda p: p.total("turnout_requests_total") >= requests)


# --- traffic through the gateway ----------------------------------------------------------------


def test_json_and_streamed_answers_count_requests_decisions_tokens_cost_and_latency(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(models={"lite-model": {"upstream": "fake", "name": "fake-lite", "input_price": 1.0,
                                             "output_price": 2.0}})  # fmt: skip
    with sdk(gw) as client:
        client.chat.completions.create(model="auto", messages=HI)
        client.chat.completions.create(model="auto", messages=HI, extra_body={"metadata": {"route": "deep"}})
        list(client.chat.completions.create(model="deep", messages=HI, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
        list(client.chat.completions.create(model="deep", messages=HI, stream=True))
    p = after(gw, 4)

    req = "turnout_requests_total"
    assert p.get(req, endpoint="chat", router="auto", route="lite", model="lite-model", status="200") == 1
    assert p.get(req, endpoint="chat", router="auto", route="deep", model="deep-model", status="200") == 1
    assert p.get(req, endpoint="chat", router="none", route="deep", model="deep-model", status="200") == 2
    dec = "turnout_routing_decisions_total"
    assert p.get(dec, router="auto", route="lite", strategy="fallback", reason="abstained") == 1
    assert p.get(dec, router="auto", route="deep", strategy="explicit", reason="hint") == 1
    assert p.get(dec, router="none", route="deep", strategy="explicit", reason="model") == 2
    verdicts = "turnout_strategy_verdicts_total"
    assert p.get(verdicts, router="auto", strategy="explicit", verdict="abstained") == 1
    assert p.get(verdicts, router="auto", strategy="explicit", verdict="decided") == 1
    assert p.get("turnout_decision_duration_seconds_count", strategy="fallback") == 1
    assert p.get("turnout_decision_duration_seconds_count", strategy="explicit") == 3

    tok = "turnout_tokens_total"
    assert p.get(tok, model="lite-model", direction="input", source="reported") == 8
    assert p.get(tok, model="lite-model", direction="output", source="reported") == 7
    assert p.get(tok, model="deep-model", direction="input", source="reported") == 8 + 8  # JSON + include_usage
    assert p.get(tok, model="deep-model", direction="output", source="reported") == 7 + 4
    assert p.get(tok, model="deep-model", direction="output", source="estimated") == 4  # counted content deltas
    assert p.get(tok, model="deep-model", direction="input", source="estimated") > 0
    assert p.get("turnout_cost_total", model="lite-model", currency="USD") == pytest.approx((8 * 1 + 7 * 2) / 1e6)
    assert p.total("turnout_cost_total", model="deep-model") == 0  # no prices, no cost series

    assert p.get("turnout_time_to_first_token_seconds_count", model="deep-model") == 2
    assert p.get("turnout_time_per_output_token_seconds_count", model="deep-model") == 2
    assert p.total("turnout_time_to_first_token_seconds_count", model="lite-model") == 0  # JSON answers have none
    ttft = p.get("turnout_time_to_first_token_seconds_sum", model="deep-model")
    whole = p.get("turnout_request_duration_seconds_sum", route="deep", stream="true")
    assert 0 < ttft <= whole
    assert p.get("turnout_request_duration_seconds_count", route="lite", stream="false") == 1
    assert p.get("turnout_upstream_duration_seconds_count", model="deep-model", outcome="ok") == 3
    assert p.get("turnout_upstream_duration_seconds_bucket", model="deep-model", outcome="ok", le="+Inf") == 3
    assert (
        p.total("turnout_errors_total") == p.total("turnout_retries_total") == p.total("turnout_fallbacks_total") == 0
    )
    assert p.get("turnout_active_streams") == 0
    assert p.total("turnout_cache_requests_total") == 0  # no cache yet: `off` is not counted
    promtool_accepts(p)


def test_upstream_failures_count_errors_retries_and_fallbacks(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    gw = make_gateway(
        upstreams={"quick": {"base_url": upstream.url, "first_byte_timeout_s": 0.2}},
        models={"m-busy": {"upstream": "fake", "name": "fake?fault=429&retry_after=30"},
                "m-timeout": {"upstream": "quick", "name": "fake?fault=slow&slow_ms=2000"}},
        routes={"lite": {"targets": ["m-500", "lite-model"]}, "deep": {"targets": ["m-400"]},
                "busy": {"targets": ["m-busy"]}, "stuck": {"targets": ["m-timeout"]},
                "down": {"targets": ["dead-model"]}},
    )  # fmt: skip
    with sdk(gw) as client:
        client.chat.completions.create(model="lite", messages=HI)  # m-500 twice, then lite-model answers
        for model, error in (("deep", openai.BadRequestError), ("busy", openai.APIStatusError),
                             ("stuck", openai.APIStatusError), ("down", openai.APIStatusError)):  # fmt: skip
            with pytest.raises(error):
                client.chat.completions.create(model=model, messages=HI)
    httpx.post(gw.url + "/v1/chat/completions", content=b"{not json")
    httpx.post(gw.url + "/v1/chat/completions", json={"model": "nope", "messages": HI})
    p = after(gw, 7)

    req = "turnout_requests_total"
    assert p.get(req, endpoint="chat", router="none", route="lite", model="lite-model", status="200") == 1
    assert p.get(req, endpoint="chat", router="none", route="deep", model="m-400", status="400") == 1
    assert p.get(req, endpoint="chat", router="none", route="busy", model="m-busy", status="429") == 1
    assert p.get(req, endpoint="chat", router="none", route="stuck", model="m-timeout", status="504") == 1
    assert p.get(req, endpoint="chat", router="none", route="down", model="dead-model", status="502") == 1
    assert p.get(req, endpoint="chat", router="none", route="none", model="none", status="400") == 1
    assert p.get(req, endpoint="chat", router="none", route="none", model="none", status="404") == 1

    errors = "turnout_errors_total"
    assert p.get(errors, model="m-400", reason="upstream_4xx") == 1
    assert p.get(errors, model="m-busy", reason="rate_limited") == 1
    assert p.get(errors, model="m-timeout", reason="timeout") == 1
    assert p.get(errors, model="dead-model", reason="connect") == 1
    assert p.get(errors, model="none", reason="parse_error") == 2
    assert p.total(errors) == 6  # the fallback that answered is not an error

    up = "turnout_upstream_errors_total"
    assert p.get(up, model="m-500", reason="upstream_5xx") == 2
    assert p.get(up, model="m-400", reason="upstream_4xx") == 1
    assert p.get(up, model="m-busy", reason="rate_limited") == 1  # Retry-After over the cap: no retry
    assert p.get(up, model="m-timeout", reason="timeout") == 2
    assert p.get(up, model="dead-model", reason="connect") == 2
    assert p.get("turnout_retries_total", model="m-500") == 1
    assert p.get("turnout_retries_total", model="m-timeout") == 1
    assert p.get("turnout_retries_total", model="dead-model") == 1
    assert p.get("turnout_fallbacks_total", route="lite", model="m-500") == 1
    assert p.total("turnout_fallbacks_total") == 1
    assert p.get("turnout_upstream_duration_seconds_count", model="m-500", outcome="error") == 2
    assert p.get("turnout_upstream_duration_seconds_count", model="lite-model", outcome="ok") == 1
    timeouts = p.get("turnout_upstream_duration_seconds_sum", model="m-timeout", outcome="error")
    assert 0.39 <= timeouts < 1.5  # two attempts cut at first_byte_timeout_s 0.2 (timers may fire ~0.1 ms early)
    promtool_accepts(p)


def test_a_client_that_leaves_mid_stream_is_cancelled_and_the_stream_gauge_returns_to_zero(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(models={"long": {"upstream": "fake", "name": "fake?chunks=200&delay_ms=20"}},
                      routes={"lite": {"targets": ["long"]}})  # fmt: skip
    body = {"model": "lite", "messages": HI, "stream": True}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body) as r:
        chunks = r.iter_raw()
        next(chunks)
        assert scrape(gw).get("turnout_active_streams") == 1
        chunks.close()  # leaves: the connection closes mid-stream
    p = after(gw, 1)
    assert p.get("turnout_requests_total", endpoint="chat", router="none", route="lite", model="long",
                 status="200") == 1  # fmt: skip
    assert p.get("turnout_errors_total", model="long", reason="cancelled") == 1
    assert p.get("turnout_active_streams") == 0
    assert p.get("turnout_time_to_first_token_seconds_count", model="long") == 1
    assert p.total("turnout_time_per_output_token_seconds_count") == 0  # a cut stream says nothing of the pace


def test_judge_decisions_count_reason_codes_verdicts_and_classification_failures(
    make_gateway: GatewayFactory,
) -> None:
    llm = {"strategies": ["explicit", "llm"], "routes": ["lite", "deep"], "fallback": "lite"}
    gw = make_gateway(
        models={"judge": {"upstream": "fake", "name": "fake?judge=1"}},
        routers={"judged": {**llm, "llm": {"model": "judge"}}, "unjudged": {**llm, "llm": {"model": "dead-model"}}},
    )
    route = gw.url + "/v1/route"
    with sdk(gw) as client:
        client.chat.completions.create(model="judged", messages=[{"role": "user", "content": "route:deep"}])
        client.chat.completions.create(model="unjudged", messages=HI)
    httpx.post(route, json={"model": "judged", "text": "route:deep confidence:0.2"})
    p = after(gw, 3)

    dec = "turnout_routing_decisions_total"
    assert p.get(dec, router="judged", route="deep", strategy="llm", reason="judged") == 1
    assert p.get(dec, router="judged", route="lite", strategy="fallback", reason="low_confidence") == 1
    assert p.get(dec, router="unjudged", route="lite", strategy="fallback", reason="failed") == 1
    verdicts = "turnout_strategy_verdicts_total"
    assert p.get(verdicts, router="judged", strategy="llm", verdict="decided") == 1
    assert p.get(verdicts, router="judged", strategy="llm", verdict="below_threshold") == 1
    assert p.get(verdicts, router="unjudged", strategy="llm", verdict="failed") == 1
    assert p.get(verdicts, router="unjudged", strategy="explicit", verdict="abstained") == 1
    assert p.get("turnout_errors_total", model="lite-model", reason="classification_failed") == 1
    assert p.get("turnout_requests_total", endpoint="route", router="judged", route="lite", model="none",
                 status="200") == 1  # fmt: skip
    assert p.get("turnout_decision_duration_seconds_count", strategy="llm") == 1
    assert "judge" not in {v for (_, labels) in p.series for _, v in labels}  # the judge is no answering model
    promtool_accepts(p)


def test_passthrough_model_ids_collapse_to_other_and_the_page_stays_bounded(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(passthrough={"enabled": True, "upstream": "fake"})
    ids = [f"client-model-{uuid.uuid4().hex}" for _ in range(40)]
    with sdk(gw) as client:
        for model in ids[:2]:
            client.chat.completions.create(model=model, messages=HI)
        first = after(gw, 2)
        for model in ids[2:]:
            client.chat.completions.create(model=model, messages=HI)
    p = after(gw, 40)
    assert set(p.series) == set(first.series)  # the same series, only their values moved
    assert p.get("turnout_requests_total", endpoint="chat", router="none", route="passthrough", model="other",
                 status="200") == 40  # fmt: skip
    assert p.get("turnout_routing_decisions_total", router="none", route="passthrough", strategy="passthrough",
                 reason="passthrough") == 40  # fmt: skip
    assert p.get("turnout_tokens_total", model="other", direction="input", source="reported") == 40 * 8
    assert not any(model in p.text for model in ids)


def test_the_page_never_carries_prompt_text_or_keys(make_gateway: GatewayFactory) -> None:
    client_key = "sk-turnout-client-key-98765"
    gw = make_gateway(auth={"keys": [client_key]},
                      routes={"deep": {"targets": ["m-401", "lite-model"]}})  # fmt: skip
    with sdk(gw, client_key) as client:
        client.chat.completions.create(model="auto", messages=HI)
        client.chat.completions.create(model="deep", messages=HI)  # the upstream 401 names a key
        list(client.chat.completions.create(model="lite", messages=HI, stream=True))
    with sdk(gw, "sk-wrong-key-55555") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="auto", messages=HI)
    p = after(gw, 4)
    assert p.get("turnout_errors_total", model="none", reason="auth") == 1
    for secret in (SECRET, UPSTREAM_KEY, client_key, "sk-wrong-key-55555", "sk-live-abcdef123456"):
        assert secret not in p.text


def test_the_page_is_valid_exposition_with_prometheus_names(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    with sdk(gw) as client:
        list(client.chat.completions.create(model="auto", messages=HI, stream=True))
    p = after(gw, 1)
    assert {f.name for f in p.families} == {f.name for f in MetricsSink(gw.app.settings).registry.collect()}
    for family in p.families:
        assert re.fullmatch(r"(turnout|process)_[a-z_]+[a-z]", family.name), family.name
        exposed = family.name + ("_total" if family.type == "counter" else "")
        assert f"# HELP {exposed} " in p.text and f"# TYPE {exposed} {family.type}\n" in p.text
        assert family.documentation.endswith(".")
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
        if family.type == "counter":
            assert all(s.name == family.name + "_total" for s in family.samples)
        for s in family.samples:
            assert all(re.fullmatch(r"[a-z_]+", k) for k in s.labels)
    assert "# TYPE turnout_active_streams gauge" in p.text
    promtool_accepts(p)


def test_the_page_has_the_version_and_the_gateway_process(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    before = after(gw, 0)
    with sdk(gw) as client:
        for _ in range(20):
            client.chat.completions.create(model="lite", messages=HI)
    p = after(gw, 20)
    assert p.get("turnout_build_info", version=turnout.__version__) == 1
    assert p.get("process_resident_memory_bytes") > 10_000_000  # a Python process with turnout loaded
    assert p.get("process_open_fds") > 3 and p.get("process_max_fds") >= p.get("process_open_fds")
    assert p.get("process_cpu_seconds_total") >= before.get("process_cpu_seconds_total") > 0
    assert abs(p.get("process_start_time_seconds") - time.time()) < 3600  # this test's process, started lately


# --- the sink on its own: label bounding on records the gateway cannot produce yet ---------------


def sink() -> MetricsSink:
    return MetricsSink(validate(base_config("http://127.0.0.1:1/v1"), {}))


def page_of(s: MetricsSink) -> Page:
    body, content_type = s.render()
    assert content_type.startswith("text/plain")
    return Page(body.decode())


def test_unknown_values_collapse_to_other_and_free_text_never_becomes_a_label() -> None:
    s = sink()
    rec = RequestRecord("r1", 0.0, "chat", 418, error="brand_new_reason", router="ghost", route="nowhere",
                        model="gpt-secret-id", strategy="telepathy", reason=f"because {SECRET}",
                        trace=[{"strategy": "mystery", "verdict": "pondered"}], cache="semantic_hit")  # fmt: skip
    s.emit(rec)
    p = page_of(s)
    assert p.get("turnout_requests_total", endpoint="chat", router="other", route="other", model="other",
                 status="4xx") == 1  # fmt: skip
    assert p.get("turnout_errors_total", model="other", reason="other") == 1
    assert p.get("turnout_routing_decisions_total", router="other", route="other", strategy="other",
                 reason="other") == 1  # fmt: skip
    assert p.get("turnout_strategy_verdicts_total", router="other", strategy="other", verdict="other") == 1
    assert p.get("turnout_cache_requests_total", route="other", result="semantic_hit") == 1
    for text in ("brand_new_reason", "ghost", "nowhere", "gpt-secret-id", "telepathy", SECRET, "mystery", "pondered"):
        assert text not in p.text


def test_a_batch_counts_as_its_records_one_by_one_with_one_signature_or_several() -> None:
    """The usual batch has one signature (grouped at once, without a loop); a mixed one is grouped record
    by record. Either way every request series reads as if the records had come one at a time."""
    for mixed in (False, True):
        records = [
            RequestRecord(f"s{i}", 0.0, "chat", 502 if mixed and i % 3 == 0 else 200, route="lite",
                          model="lite-model", stream=True, latency_ms=10.0 * i, ttft_ms=1.0, completion_tokens=5,
                          prompt_tokens=3, error="upstream_5xx" if mixed and i % 3 == 0 else None)
            for i in range(9)
        ]  # fmt: skip
        batched, single = sink(), sink()
        batched.emit_many(records)
        for r in records:
            single.emit_many([r])
        a, b = page_of(batched), page_of(single)
        requests = {k: v for k, v in a.series.items() if k[0].startswith(("turnout_requests", "turnout_time_"))}
        assert len(requests) > 10
        assert requests == pytest.approx({k: b.series[k] for k in requests})
        assert a.get("turnout_requests_total", endpoint="chat", router="none", route="lite", model="lite-model",
                     status="200") == (6 if mixed else 9)  # fmt: skip


def test_a_batch_is_counted_per_signature_and_whole_or_not_at_all() -> None:
    """`emit_many` groups a batch by signature and counts each group at once: a flood of distinct error
    codes is counted in full and bounded to `other`; a record that cannot be counted fails the batch before
    anything of it is counted (telemetry.Telemetry then hands the records over one by one)."""
    s = sink()
    n = 5000
    s.emit_many([RequestRecord(f"r{i}", 0.0, "chat", 502, error=f"never-seen-{i}", route="lite", model="lite-model")
                 for i in range(n)])  # fmt: skip
    ok = [
        RequestRecord(f"s{i}", 0.0, "chat", 200, route="lite", model="lite-model", stream=i % 2 == 0,
                      latency_ms=10.0 * i, ttft_ms=1.0, completion_tokens=5, prompt_tokens=3)
        for i in range(10)
    ]  # fmt: skip
    bad = RequestRecord("bad", 0.0, "chat", 200, route="lite", model="lite-model", latency_ms=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.emit_many([*ok, bad])
    s.emit_many(ok)
    p = page_of(s)
    assert p.get("turnout_requests_total", endpoint="chat", router="none", route="lite", model="lite-model",
                 status="502") == n  # fmt: skip
    assert p.get("turnout_errors_total", model="lite-model", reason="other") == n
    assert "never-seen" not in p.text
    assert p.get("turnout_requests_total", endpoint="chat", router="none", route="lite", model="lite-model",
                 status="200") == 10  # fmt: skip
    assert p.get("turnout_tokens_total", model="lite-model", direction="output", source="reported") == 50
    assert p.get("turnout_request_duration_seconds_count", route="lite", stream="true") == 5
    assert p.get("turnout_request_duration_seconds_sum", route="lite", stream="false") == pytest.approx(0.25)
    assert p.get("turnout_time_to_first_token_seconds_count", model="lite-model") == 10
    # TPOT: (latency - ttft) / (tokens - 1), per request
    assert p.get("turnout_time_per_output_token_seconds_sum", model="lite-model") == pytest.approx(
        sum((10.0 * i - 1.0) / 4 / 1000 for i in range(10) if 10.0 * i > 1.0)
    )


def test_histogram_buckets_match_a_per_value_bisect_bounds_included() -> None:
    import bisect
    import random

    from turnout.telemetry.metrics import LATENCY_BUCKETS

    s = sink()
    rng = random.Random(3)
    values = [*LATENCY_BUCKETS, *(rng.uniform(0, 400) for _ in range(2000)), 0.0, 1e6]
    for i, v in enumerate(values):
        s.emit(RequestRecord(f"r{i}", 0.0, "chat", 200, route="lite", model="lite-model", latency_ms=v * 1000))
    p = page_of(s)
    name = "turnout_request_duration_seconds"
    want = [0] * (len(LATENCY_BUCKETS) + 1)
    for v in values:
        want[bisect.bisect_left(LATENCY_BUCKETS, v)] += 1
    cumulative = 0
    for bound, n in zip([*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"], want, strict=True):
        cumulative += n
        assert p.get(name + "_bucket", route="lite", stream="false", le=bound) == cumulative, bound
    assert p.get(name + "_count", route="lite", stream="false") == len(values)
    assert p.get(name + "_sum", route="lite", stream="false") == pytest.approx(sum(values))


def test_requests_of_one_kind_add_up_tokens_and_cost_across_scrapes() -> None:
    s = sink()
    for i in range(3):
        s.emit(RequestRecord(f"r{i}", 0.0, "chat", 200, route="lite", model="lite-model", prompt_tokens=10 + i,
                             completion_tokens=5, cost_usd=0.25, latency_ms=12.0))  # fmt: skip
    first = page_of(s)
    s.emit(RequestRecord("r9", 0.0, "chat", 200, route="lite", model="lite-model", prompt_tokens=7,
                         completion_tokens=0, tokens_estimated=True, cost_usd=None, latency_ms=3.0))  # fmt: skip
    p = page_of(s)
    tok = "turnout_tokens_total"
    assert first.get(tok, model="lite-model", direction="input", source="reported") == 33
    assert p.get(tok, model="lite-model", direction="input", source="reported") == 33
    assert p.get(tok, model="lite-model", direction="output", source="reported") == 15
    assert p.get(tok, model="lite-model", direction="input", source="estimated") == 7
    assert p.get(tok, model="lite-model", direction="output", source="estimated") == 0  # no series for 0
    assert p.get("turnout_cost_total", model="lite-model", currency="USD") == 0.75
    assert p.get("turnout_request_duration_seconds_count", route="lite", stream="false") == 4
    assert p.get("turnout_requests_total", endpoint="chat", router="none", route="lite", model="lite-model",
                 status="200") == 4  # fmt: skip


@pytest.mark.parametrize(("code", "label"), [(200, "200"), (429, "429"), (499, "499"), (418, "4xx"), (201, "2xx"),
                                             (599, "5xx"), (99, "other"), (1000, "other")])  # fmt: skip
def test_status_labels_are_a_fixed_set(code: int, label: str) -> None:
    assert status_label(code) == label


def test_each_sink_keeps_its_own_registry() -> None:
    a, b = sink(), sink()
    a.emit(RequestRecord("r1", 0.0, "chat", 200, route="lite", model="lite-model"))
    a.stream_opened()
    assert page_of(a).total("turnout_requests_total") == 1 and page_of(a).get("turnout_active_streams") == 1
    assert page_of(b).total("turnout_requests_total") == 0 and page_of(b).get("turnout_active_streams") == 0


# --- the dashboard and the docs name only metrics that exist ------------------------------------


def sample_names(s: MetricsSink) -> dict[str, set[str]]:
    """Every sample name the sink can write, with the label names it carries."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    out: dict[str, set[str]] = {}
    for family in s.families:
        kind = "histogram" if isinstance(family, HistogramFamily) else "counter"
        base = family.name.removesuffix("_total")
        for suffix in suffixes[kind]:
            out[base + suffix] = set(family.labels) | ({"le"} if suffix == "_bucket" else set())
    out["turnout_active_streams"] = set()
    out["turnout_build_info"] = {"version"}
    for family in s.process.collect():
        out.update((sample.name, set()) for sample in family.samples)
    return out


def dashboard_queries() -> list[str]:
    board = json.loads((ROOT / "deploy/grafana/turnout-dashboard.json").read_text())
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    exprs: list[str] = [v["query"]["query"] for v in board["templating"]["list"] if v.get("type") == "query"]
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        exprs += [t["expr"] for t in panel["targets"]]
    return exprs


def test_the_grafana_dashboard_queries_only_metrics_and_labels_the_sink_writes() -> None:
    known = sample_names(sink())
    queries = dashboard_queries()
    assert len(queries) >= 12
    for expr in queries:
        used = re.findall(r"\b(?:turnout|process)_[a-z_]+", expr)
        assert used, expr
        labels = {"instance", "job"}  # the labels Prometheus adds to every scraped series
        for name in used:
            assert name in known, f"{name} (in `{expr}`) is not written by the sink"
            labels |= known[name]
        grouped = {x.strip() for g in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)
                   for x in g.split(",") if x.strip()}  # fmt: skip
        selected = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        assert grouped | selected <= labels, f"unknown labels {(grouped | selected) - labels} in `{expr}`"


def test_every_dashboard_query_is_scoped_to_the_chosen_jobs_and_instances() -> None:
    """Several turnout deployments in one Prometheus: every series a panel or a variable reads is filtered
    by the `job` and `instance` variables (which list the targets that expose turnout_build_info)."""
    board = json.loads((ROOT / "deploy/grafana/turnout-dashboard.json").read_text())
    variables = [v["name"] for v in board["templating"]["list"]]
    assert variables == ["job", "instance", "router", "route", "model"]
    for expr in dashboard_queries():
        if expr.startswith("label_values(turnout_build_info"):
            continue  # the job and instance variables themselves
        for metric, selector in re.findall(r"\b((?:turnout|process)_[a-z_]+)(\{[^}]*\})?", expr):
            assert selector.startswith('{job=~"$job", instance=~"$instance"'), f"{metric} in `{expr}`"


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query, its Grafana variables filled in, as a recording rule: `promtool check rules` parses them."""
    fill = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".*", "$instance": ".*", "$router": ".*",
            "$route": ".*", "$model": ".*"}  # fmt: skip
    rules = []
    for i, expr in enumerate(dashboard_queries()):
        if expr.startswith("label_values("):  # a Grafana template function, not PromQL
            expr = re.fullmatch(r"label_values\((\w+(?:\{[^}]*\})?), \w+\)", expr)[1]  # type: ignore[index]
        for name, value in fill.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        rules.append({"record": f"turnout:dashboard_query_{i}", "expr": expr})
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_the_docs_describe_every_metric() -> None:
    docs = (ROOT / "docs/metrics.md").read_text()
    for family in sink().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in docs, name
