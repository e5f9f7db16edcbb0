"""The fallback loop and the SSE relay, against faults the fake upstream really produces on the wire."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_KEY, GatewayFactory, UpstreamThread, sdk
from turnout.config import ProxyConfig
from turnout.errors import UpstreamStatus
from turnout.health import HealthBoard
from turnout.proxy import Proxy, client_error, scrub

HI = [{"role": "user", "content": "hi"}]


def chat(gw_url: str, model: str, **extra: object) -> httpx.Response:
    return httpx.post(gw_url + "/v1/chat/completions", json={"model": model, "messages": HI, **extra}, timeout=15)


def sent_models(upstream: UpstreamThread) -> list[str]:
    return [r["body"]["model"] for r in upstream.requests]


@pytest.mark.parametrize("fault", ["500", "429", "drop", "slow", "401"])
@pytest.mark.parametrize("stream", [False, True])
def test_retryable_faults_fall_back_to_the_next_target(
    make_gateway: GatewayFactory, upstream: UpstreamThread, fault: str, stream: bool
) -> None:
    gw = make_gateway(routes={"lite": {"targets": [f"m-{fault}", "lite-model"]}},
                      proxy={"attempts_per_target": 1, "backoff_s": 0, "retry_after_cap_s": 0})  # fmt: skip
    with sdk(gw) as client:
        if stream:
            with client.chat.completions.with_streaming_response.create(model="lite", messages=HI, stream=True) as r:
                text = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
                headers = r.headers
            assert text == "tok0 tok1 tok2 tok3 "
        else:
            raw = client.chat.completions.with_raw_response.create(model="lite", messages=HI)
            assert raw.parse().choices[0].message.content == "Hello from the fake upstream."
            headers = raw.headers
    assert headers["x-turnout-model"] == "lite-model"
    assert headers["x-turnout-attempts"] == "2"
    assert sent_models(upstream) == [f"fake?fault={fault}", "fake-lite"]


def test_a_failing_target_is_retried_before_falling_back(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    gw = make_gateway(models={"flaky": {"upstream": "fake", "name": "fake?fault=500&fail_times=1"}},
                      routes={"lite": {"targets": ["flaky", "lite-model"]}})  # fmt: skip
    r = chat(gw.url, "lite")
    assert r.status_code == 200
    assert (r.headers["x-turnout-model"], r.headers["x-turnout-attempts"]) == ("flaky", "2")
    assert sent_models(upstream) == ["fake?fault=500&fail_times=1"] * 2


def test_429_waits_for_retry_after_within_the_cap(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = make_gateway(models={"limited": {"upstream": "fake", "name": "fake?fault=429&fail_times=1&retry_after=0.4"}},
                      routes={"lite": {"targets": ["limited", "lite-model"]}})  # fmt: skip
    start = time.monotonic()
    r = chat(gw.url, "lite")
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "limited"
    assert time.monotonic() - start >= 0.4


def test_429_beyond_the_cap_falls_back_at_once(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = make_gateway(models={"limited": {"upstream": "fake", "name": "fake?fault=429&retry_after=30"}},
                      routes={"lite": {"targets": ["limited", "lite-model"]}})  # fmt: skip
    start = time.monotonic()
    r = chat(gw.url, "lite")
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "lite-model"
    assert time.monotonic() - start < 1.0
    assert sent_models(upstream) == ["fake?fault=429&retry_after=30", "fake-lite"]


def test_upstream_4xx_passes_through_and_is_not_retried(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = make_gateway(routes={"lite": {"targets": ["m-400", "lite-model"]}})
    with sdk(gw) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="lite", messages=HI)
    assert info.value.body == {"message": "fake: `temperature` must be <= 2", "type": "invalid_request_error",
                               "param": None, "code": "invalid_value"}  # fmt: skip
    assert info.value.response.headers["x-turnout-attempts"] == "1"
    assert sent_models(upstream) == ["fake?fault=400"]


def test_all_targets_failed_is_502_listing_each_attempt_without_secrets(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    gw = make_gateway(routes={"lite": {"targets": ["m-500", "m-401", "dead-model"]}})
    r = chat(gw.url, "lite")
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "all_targets_failed" and err["type"] == "upstream_error"
    assert err["message"] == (
        "every target of route `lite` failed (`m-500`: http_500; `m-500`: http_500; `m-401`: http_401; "
        "`m-401`: http_401; `dead-model`: connect; `dead-model`: connect)"
    )
    assert r.headers["x-turnout-attempts"] == "6"
    assert UPSTREAM_KEY not in r.text and "sk-live" not in r.text and "fake upstream failure" not in r.text


def test_all_targets_timing_out_is_504(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(routes={"lite": {"targets": ["m-slow"]}}, proxy={"attempts_per_target": 1})
    start = time.monotonic()
    r = chat(gw.url, "lite")
    assert r.status_code == 504
    assert "`m-slow`: timeout" in r.json()["error"]["message"]
    assert time.monotonic() - start < 3  # first_byte_timeout_s is 1 s in the test config


def test_dead_upstream_gets_a_clear_502_quickly(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(routes={"lite": {"targets": ["dead-model"]}})
    start = time.monotonic()
    r = chat(gw.url, "lite", stream=True)
    assert r.status_code == 502
    assert "`dead-model`: connect" in r.json()["error"]["message"]
    assert time.monotonic() - start < 2


def test_stream_failing_after_the_first_byte_ends_with_an_error_event(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    gw = make_gateway(models={"mid": {"upstream": "fake", "name": "fake?fault=drop_mid&chunks=8&delay_ms=20"}},
                      routes={"lite": {"targets": ["mid", "lite-model"]}})  # fmt: skip
    got: list[str] = []
    with sdk(gw) as client, pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="lite", messages=HI, stream=True):
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert "failed mid-stream" in str(info.value)
    assert got and len(got) < 9
    assert sent_models(upstream) == ["fake?fault=drop_mid&chunks=8&delay_ms=20"]  # no retry after the first byte
    raw = chat(gw.url, "lite", stream=True)  # and on the wire: a clean close after one error event
    events = [line for line in raw.text.split("\n\n") if line]
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "stream_interrupted"


def test_json_body_dropped_half_way_falls_back(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = make_gateway(routes={"lite": {"targets": ["m-drop_mid", "lite-model"]}}, proxy={"attempts_per_target": 1})
    r = chat(gw.url, "lite")
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "lite-model"


def test_client_disconnect_mid_stream_cancels_the_upstream(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    gw = make_gateway(models={"long": {"upstream": "fake", "name": "fake?chunks=200&delay_ms=20"}},
                      routes={"lite": {"targets": ["long"]}})  # fmt: skip
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=10,
                      json={"model": "lite", "messages": HI, "stream": True}) as r:  # fmt: skip
        for _ in r.iter_raw():
            break  # read the first bytes, then hang up
    deadline = time.monotonic() + 3
    while not upstream.abandoned and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.abandoned, "the upstream stream kept running after the client left"
    assert upstream.abandoned[0]["sent"] < 50


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_before_the_first_byte_cancels_the_upstream(
    make_gateway: GatewayFactory, upstream: UpstreamThread, tmp_path: Path, stream: bool
) -> None:
    gw = make_gateway(models={"thinking": {"upstream": "fake", "name": "fake?fault=slow&slow_ms=3000"}},
                      routes={"lite": {"targets": ["thinking"]}}, runtime_dir=str(tmp_path))  # fmt: skip
    sent = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.3 s and hangs up
        httpx.post(gw.url + "/v1/chat/completions", timeout=0.3,
                   json={"model": "lite", "messages": HI, "stream": stream})  # fmt: skip
    # The gateway's own first-byte timeout (1 s) would also close the connection: look before it fires.
    while not upstream.abandoned and time.monotonic() < sent + 0.8:
        time.sleep(0.01)
    assert upstream.abandoned == [{"model": "fake?fault=slow&slow_ms=3000", "sent": 0, "of": 0}]
    gw.stop()
    with closing(sqlite3.connect(tmp_path / "audit.sqlite3")) as conn:
        assert conn.execute("SELECT status, error FROM requests").fetchall() == [(499, "cancelled")]


# --- units ---------------------------------------------------------------------------------


def test_scrub_removes_keys_and_bearer_tokens() -> None:
    text = "bad key sk-live-abcdef123456 and Bearer eyJhbGciOi.x and secret-key-9"
    assert scrub(text, ("secret-key-9",)) == "bad key [redacted] and [redacted] and [redacted]"


def test_client_error_never_copies_a_raw_non_json_body() -> None:
    err = client_error(404, b"<html>nginx secret page</html>", "fake", ())
    assert err.status == 404 and "nginx" not in err.message and "HTTP 404" in err.message


def test_retry_after_beyond_the_cap_means_move_on() -> None:
    proxy = Proxy(ProxyConfig(retry_after_cap_s=2), {}, HealthBoard())
    assert proxy._wait_before_retry(UpstreamStatus("x", upstream_status=429, retry_after=5), 0) is None
    assert proxy._wait_before_retry(UpstreamStatus("x", upstream_status=429, retry_after=1.5), 0) == 1.5
    assert proxy._wait_before_retry(UpstreamStatus("x", upstream_status=500), 2) == 0.05 * 4


def test_every_target_rate_limited_is_a_429(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(models={"busy": {"upstream": "fake", "name": "fake?fault=429&retry_after=30"}},
                      routes={"lite": {"targets": ["busy"]}})  # fmt: skip
    r = chat(gw.url, "lite")
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(("after", "second_attempts"), [(1, "1"), (3, "2")])
def test_an_upstream_marked_down_is_tried_last_after_the_configured_failures(
    make_gateway: GatewayFactory, after: int, second_attempts: str
) -> None:
    gw = make_gateway(
        routes={"lite": {"targets": ["dead-model", "lite-model"]}},
        proxy={"attempts_per_target": 1, "unhealthy_after": after, "unhealthy_cooldown_s": 60},
    )
    with sdk(gw) as client:
        first = client.chat.completions.with_raw_response.create(model="lite", messages=HI)
        second = client.chat.completions.with_raw_response.create(model="lite", messages=HI)
    assert first.headers["x-turnout-attempts"] == "2"  # the dead upstream first, then the live one
    # one failure marks it down with unhealthy_after 1: the live target goes first; with 3 not yet
    assert second.headers["x-turnout-attempts"] == second_attempts
    assert second.parse().choices[0].message.content
