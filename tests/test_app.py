"""The HTTP surface, driven by the official openai SDK and raw httpx against a real gateway socket."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_KEY, GatewayFactory, GatewayThread, UpstreamThread, sdk

HI = [{"role": "user", "content": "hi"}]


def test_health_is_open_without_a_key(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth={"keys": ["sk-turnout-test"]})
    r = httpx.get(gw.url + "/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["x-turnout-request-id"]


def test_ready_reports_config_routes_and_reachability(http: httpx.Client) -> None:
    r = http.get("/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    assert body["config"] == "test config"
    assert body["routers"]["auto"] == {"routes": ["lite", "deep"], "strategies": ["explicit"], "fallback": "lite"}
    assert body["upstreams"]["fake"]["reachable"] is True
    assert body["upstreams"]["dead"]["reachable"] is False
    assert body["routes"]["lite"] == {"targets": 1, "reachable_targets": 1}


def test_ready_is_503_when_a_route_has_no_reachable_target(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(routes={"gone": {"targets": ["dead-model"]}})
    r = httpx.get(gw.url + "/ready")
    assert r.status_code == 503
    assert "route `gone` has no reachable target" in r.json()["problems"]


def test_models_lists_routers_and_routes_but_not_target_names(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["auto", "lite", "deep"]
    assert "fake-lite" not in json.dumps([m.model_dump() for m in client.models.list()])


def test_models_lists_target_names_when_configured(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(expose_models=True)
    data = httpx.get(gw.url + "/v1/models").json()["data"]
    assert next(m for m in data if m["id"] == "deep")["targets"] == ["fake-deep", "fake-lite"]


@pytest.mark.parametrize("model", ["auto", "lite", "deep"])
def test_chat_completion_through_every_virtual_model(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI)
    reply = raw.parse()
    assert reply.choices[0].message.content == "Hello from the fake upstream."
    assert reply.usage is not None and reply.usage.total_tokens == 15
    h = raw.headers
    assert h["x-turnout-route"] == ("lite" if model == "auto" else model)
    assert h["x-turnout-router"] == ("auto" if model == "auto" else "")
    assert h["x-turnout-strategy"] == ("fallback" if model == "auto" else "explicit")
    assert h["x-turnout-model"] == ("deep-model" if model == "deep" else "lite-model")
    assert h["x-turnout-attempts"] == "1"
    assert float(h["x-turnout-decision-ms"]) >= 0
    assert len(h["x-turnout-request-id"]) == 32


def test_streaming_relays_every_chunk(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(model="lite", messages=HI, stream=True) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-turnout-route"] == "lite"
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_async_client_streams_and_completes(gateway: GatewayThread) -> None:
    async def run() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
            r = await c.chat.completions.create(model="deep", messages=HI)
            s = await c.chat.completions.create(model="auto", messages=HI, stream=True)
            text = "".join([ch.choices[0].delta.content or "" async for ch in s if ch.choices])
            return r.choices[0].message.content or "", text

    full, streamed = asyncio.run(run())
    assert full == "Hello from the fake upstream."
    assert streamed == "tok0 tok1 tok2 tok3 "


def test_include_usage_reaches_the_upstream_and_the_usage_chunk_comes_back(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="lite", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_tool_calls_pass_through_json_and_stream(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = make_gateway(models={"tool-model": {"upstream": "fake", "name": "fake?tools=1"}},
                      routes={"lite": {"targets": ["tool-model"]}})  # fmt: skip
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
              "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    with sdk(gw) as client:
        r = client.chat.completions.create(model="auto", messages=HI, tools=tools, tool_choice="auto")
        call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        stream = client.chat.completions.create(model="auto", messages=HI, tools=tools, stream=True)
        args = "".join(
            tc.function.arguments or ""
            for ch in stream
            if ch.choices and ch.choices[0].delta.tool_calls
            for tc in ch.choices[0].delta.tool_calls
            if tc.function
        )
    assert json.loads(args) == {"city": "Paris"}
    assert upstream.requests[0]["body"]["tools"] == tools


def test_unused_fields_reach_the_upstream_unchanged_and_only_model_is_rewritten(
    http: httpx.Client, upstream: UpstreamThread
) -> None:
    body = {
        "model": "deep",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            ]},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 7,
        "temperature": 0.3,
        "stream_options": {"include_usage": True},
        "x_vendor_field": {"anything": [1, 2, 3]},
        "metadata": {"route": "lite", "team": "a"},
    }  # fmt: skip
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.headers["x-turnout-route"] == "deep"  # `model` names a route: that wins over metadata.route
    sent = upstream.requests[0]["body"]
    expected = dict(body, model="fake-deep", metadata={"team": "a"})
    assert sent == expected
    assert upstream.requests[0]["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_route_header_and_metadata_route_choose_the_route_under_a_router(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"model": "auto", "messages": HI}, headers={"x-turnout-route": "deep"})
    assert (r.headers["x-turnout-route"], r.headers["x-turnout-strategy"]) == ("deep", "explicit")
    r = http.post("/v1/chat/completions", json={"model": "auto", "messages": HI, "metadata": {"route": "deep"}})
    assert (r.headers["x-turnout-route"], r.headers["x-turnout-strategy"]) == ("deep", "explicit")
    assert r.headers["x-turnout-model"] == "deep-model"


def test_unknown_route_hint_is_a_clear_400(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"model": "auto", "messages": HI, "metadata": {"route": "nope"}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "unknown_route" and "`nope`" in err["message"] and "`lite`" in err["message"]


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=HI)
    err = info.value.body
    assert isinstance(err, dict)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "`auto`, `lite`, `deep`" in err["message"]


def test_passthrough_sends_unknown_models_unchanged(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = make_gateway(passthrough={"enabled": True, "upstream": "fake"})
    with sdk(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="vendor/some-model:7b", messages=HI)
    assert raw.headers["x-turnout-strategy"] == "passthrough"
    assert upstream.requests[0]["body"]["model"] == "vendor/some-model:7b"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model", "invalid_value"),
        (b'{"model": 3, "messages": [{"role": "user", "content": "hi"}]}', "model", "invalid_value"),
        (b'{"model": "auto"}', "messages", "invalid_value"),
        (b'{"model": "auto", "messages": []}', "messages", "invalid_value"),
        (b'{"model": "auto", "messages": ["hi"]}', "messages[0]", "invalid_value"),
        (b'{"model": "auto", "messages": [{"content": "hi"}]}', "messages[0].role", "invalid_value"),
        (b'{"model": "auto", "messages": [{"role": "user"}], "stream": "yes"}', "stream", "invalid_value"),
        (b'{"model": "auto", "messages": [{"role": "user"}], "metadata": []}', "metadata", "invalid_value"),
    ],
)
def test_malformed_requests_get_openai_shaped_400s(
    http: httpx.Client, upstream: UpstreamThread, body: bytes, param: str | None, code: str
) -> None:
    r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert upstream.requests == []


def test_body_over_the_limit_is_413(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = make_gateway(server={"max_body_bytes": 2048})
    big = {"model": "lite", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(gw.url + "/v1/chat/completions", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    assert "server.max_body_bytes" in r.json()["error"]["message"]
    assert upstream.requests == []


def test_inbound_keys_are_enforced(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(auth={"keys": ["sk-turnout-test"]})
    with sdk(gw, "wrong") as bad, pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="lite", messages=HI)
    assert "sk-turnout-test" not in str(info.value.body) and "wrong" not in str(info.value.body)
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "lite", "messages": HI})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(gw.url + "/v1/models").status_code == 401
    with sdk(gw, "sk-turnout-test") as good:
        assert good.chat.completions.create(model="lite", messages=HI).choices
    ok = httpx.get(gw.url + "/v1/models", headers={"x-api-key": "sk-turnout-test"})
    assert ok.status_code == 200
    basic_then_key = {"authorization": "Basic dXNlcjpwdw==", "x-api-key": "sk-turnout-test"}
    assert httpx.get(gw.url + "/v1/models", headers=basic_then_key).status_code == 200


def test_unknown_path_and_wrong_method_are_openai_shaped(http: httpx.Client) -> None:
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_route_endpoint_explains_without_forwarding(http: httpx.Client, upstream: UpstreamThread) -> None:
    r = http.post("/v1/route", json={"model": "auto", "text": "hello"})
    assert r.status_code == 200
    out = r.json()
    assert out["decision"]["route"] == "lite" and out["decision"]["strategy"] == "fallback"
    assert out["decision"]["strategy_ms"].keys() == {"explicit"}
    assert out["targets"] == [{"model": "lite-model", "upstream": "fake"}]
    r = http.post("/v1/route", json={"model": "auto", "messages": HI}, headers={"x-turnout-route": "deep"})
    assert r.json()["decision"]["route"] == "deep"
    assert [t["model"] for t in r.json()["targets"]] == ["deep-model", "lite-model"]
    assert upstream.requests == []


def test_requests_needing_a_capability_skip_targets_without_it(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    gw = make_gateway(models={"text-only": {"upstream": "fake", "name": "fake-text", "capabilities": ["tools"]},
                              "seeing": {"upstream": "fake", "name": "fake-vision", "capabilities": ["vision"]}},
                      routes={"lite": {"targets": ["text-only", "seeing"]}})  # fmt: skip
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "lite", "messages": image})
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "seeing"
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "lite", "messages": image, "tools": [{}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_capable_target"
    assert [q["body"]["model"] for q in upstream.requests] == ["fake-vision"]
