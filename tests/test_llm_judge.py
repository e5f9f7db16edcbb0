"""The `llm` strategy: a judge model on the fake upstream, a gateway on a real socket, driven over HTTP."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory, GatewayThread, UpstreamThread
from turnout.errors import ClassificationFailed
from turnout.strategies.llm import judged_text, parse_verdict

JUDGES = {
    "judge": "fake?judge=1",
    "judge-fenced": "fake?judge=fenced",
    "judge-garbage": "fake?judge=garbage",
    "judge-unknown": "fake?judge=unknown",
    "judge-slow": "fake?judge=1&fault=slow&slow_ms=1500",
}
# router name -> (judge model, extra `llm` settings)
ROUTERS: dict[str, tuple[str, dict[str, Any]]] = {
    "auto": ("judge", {}),
    "auto-fenced": ("judge-fenced", {}),
    "auto-garbage": ("judge-garbage", {}),
    "auto-unknown": ("judge-unknown", {}),
    "auto-slow": ("judge-slow", {"timeout_s": 0.2}),
    "auto-500": ("m-500", {}),
    "auto-dead": ("dead-model", {}),
    "auto-one": ("judge", {"cache_size": 1}),
    "auto-short": ("judge", {"max_chars": 100}),
    "auto-plain": ("judge-plain", {}),
}
B64 = base64.b64encode(bytes(range(256)) * 12).decode()  # 4096 characters of every class


def judged(make_gateway: GatewayFactory) -> GatewayThread:
    models: dict[str, Any] = {name: {"upstream": "fake", "name": model} for name, model in JUDGES.items()}
    models["judge-plain"] = {"upstream": "fake", "name": "fake?judge=1", "capabilities": ["tools"]}
    routers = {
        name: {"routes": ["lite", "deep"], "strategies": ["explicit", "llm"], "fallback": "lite",
               "llm": {"model": model, "timeout_s": 2.0, **extra}}
        for name, (model, extra) in ROUTERS.items()
    }  # fmt: skip
    return make_gateway(models=models, routers=routers)


def decide(gw: GatewayThread, content: Any, router: str = "auto") -> dict[str, Any]:
    body = {"model": router, "messages": [{"role": "user", "content": content}]}
    r = httpx.post(gw.url + "/v1/route", json=body, timeout=10)
    assert r.status_code == 200, r.text
    decision: dict[str, Any] = r.json()["decision"]
    return decision


def judge_calls(upstream: UpstreamThread) -> list[dict[str, Any]]:
    """The bodies of the requests the judges received, in order."""
    judge_models = {*JUDGES.values(), "fake?fault=500"}
    return [r["body"] for r in upstream.requests if r["body"].get("model") in judge_models]


def judge_saw(upstream: UpstreamThread) -> str:
    calls = judge_calls(upstream)
    assert len(calls) == 1
    content: str = calls[0]["messages"][1]["content"]
    return content


# --- end to end -----------------------------------------------------------------------------


def test_judge_verdict_decides_the_route(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = judged(make_gateway)
    d = decide(gw, "please route:deep this one is hard")
    assert (d["route"], d["strategy"], d["confidence"], d["threshold"]) == ("deep", "llm", 0.9, 0.5)
    assert d["reason"] == "fake judge chose deep"
    assert d["scores"] == {"deep": 0.9}
    assert d["provenance"] == ["llm:judge"]
    assert d["trace"][-1] == {"strategy": "llm", "verdict": "decided", "route": "deep", "confidence": 0.9,
                              "scores": {"deep": 0.9}}  # fmt: skip
    [call] = judge_calls(upstream)
    assert call["temperature"] == 0 and call["stream"] is False and call["max_tokens"] <= 200
    assert call["response_format"] == {"type": "json_object"}
    system, user = call["messages"]
    assert system["role"] == "system" and user == {"role": "user", "content": "please route:deep this one is hard"}
    assert "- lite: quick answers\n- deep: hard problems" in system["content"]
    assert '{"route": "<one of: lite, deep>"' in system["content"]


def test_chat_completion_is_forwarded_to_the_judges_route(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    gw = judged(make_gateway)
    body = {"model": "auto", "messages": [{"role": "user", "content": "route:deep prove it"}]}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200
    assert r.headers["x-turnout-route"] == "deep"
    assert r.headers["x-turnout-strategy"] == "llm"
    assert r.headers["x-turnout-confidence"].startswith("0.9")
    assert [req["body"]["model"] for req in upstream.requests] == ["fake?judge=1", "fake-deep"]
    assert "response_format" not in upstream.requests[1]["body"]  # the judge's settings stay with the judge


def test_a_route_hint_decides_before_the_judge_is_asked(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = judged(make_gateway)
    body = {"model": "auto", "messages": [{"role": "user", "content": "route:lite"}], "metadata": {"route": "deep"}}
    d = httpx.post(gw.url + "/v1/route", json=body).json()["decision"]
    assert (d["route"], d["strategy"]) == ("deep", "explicit")
    assert judge_calls(upstream) == []


def test_a_judge_without_json_mode_is_not_sent_a_response_format(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    assert decide(judged(make_gateway), "route:deep", "auto-plain")["route"] == "deep"
    [call] = judge_calls(upstream)
    assert "response_format" not in call


def test_a_fenced_answer_in_another_case_is_accepted(make_gateway: GatewayFactory) -> None:
    d = decide(judged(make_gateway), "route:DEEP", "auto-fenced")
    assert (d["route"], d["strategy"], d["confidence"]) == ("deep", "llm", 0.9)


def test_a_low_confidence_verdict_falls_to_the_fallback(make_gateway: GatewayFactory) -> None:
    d = decide(judged(make_gateway), "route:deep confidence:0.2")
    assert (d["route"], d["strategy"], d["confidence"]) == ("lite", "fallback", None)
    assert d["trace"][-1]["verdict"] == "below_threshold"
    assert d["trace"][-1]["confidence"] == 0.2
    assert d["scores"] == {"deep": 0.2}  # the nearest miss, for calibration


@pytest.mark.parametrize(
    ("router", "code"),
    [
        ("auto-garbage", "judge_invalid_output"),
        ("auto-unknown", "judge_unknown_route"),
        ("auto-slow", "judge_timeout"),
        ("auto-500", "judge_http_error"),
        ("auto-dead", "judge_unreachable"),
    ],
)
def test_a_failing_judge_fails_open_to_the_fallback(
    make_gateway: GatewayFactory, upstream: UpstreamThread, router: str, code: str
) -> None:
    gw = judged(make_gateway)
    start = time.perf_counter()
    d = decide(gw, "route:deep", router)
    assert time.perf_counter() - start < 1.0  # timeout_s 0.2 holds against a judge that takes 1.5 s
    assert (d["route"], d["strategy"]) == ("lite", "fallback")
    assert d["reason"] == "llm failed; failing open to the fallback route"
    assert d["trace"] == [{"strategy": "explicit", "verdict": "abstained"},
                          {"strategy": "llm", "verdict": "failed", "error": code}]  # fmt: skip
    body = {"model": router, "messages": [{"role": "user", "content": "route:deep"}]}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)  # failures are never cached
    assert (r.status_code, r.headers["x-turnout-route"], r.headers["x-turnout-strategy"]) == (200, "lite", "fallback")
    if router != "auto-dead":
        assert len(judge_calls(upstream)) == 2


def test_the_cache_answers_a_repeated_request_without_asking_again(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    gw = judged(make_gateway)
    first = decide(gw, "route:deep what changed?")
    second = decide(gw, "route:deep what changed?")
    assert len(judge_calls(upstream)) == 1
    assert (second["route"], second["strategy"], second["confidence"]) == ("deep", "llm", 0.9)
    assert second["provenance"] == ["llm:cached"]
    assert second["reason"] == first["reason"] + " (cached verdict)"
    decide(gw, "route:deep what changed?", "auto-one")  # another router keeps its own verdicts
    assert len(judge_calls(upstream)) == 2


def test_the_cache_keeps_only_the_most_recent_verdicts(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = judged(make_gateway)
    for text in ("route:deep a", "route:deep a", "route:lite b", "route:deep a"):
        decide(gw, text, "auto-one")
    assert len(judge_calls(upstream)) == 3  # cache_size 1: `b` evicted `a`


def test_base64_and_long_strings_never_reach_the_judge(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = judged(make_gateway)
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, 760, 76))
    token = "x" * 300
    text = f"route:deep explain data:image/png;base64,{B64[:600]} then\n{wrapped}\nand {token} please"
    d = decide(gw, text)
    assert d["route"] == "deep"
    seen = judge_saw(upstream)
    assert seen == "route:deep explain [image] then\n[base64: 769 chars]\nand [long string: 300 chars] please"


def test_the_judge_sees_at_most_max_chars(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = judged(make_gateway)
    decide(gw, "route:deep " + "word " * 200 + "the actual question", "auto-short")
    seen = judge_saw(upstream)
    assert len(seen) <= 100
    assert seen.startswith("route:deep word") and seen.endswith("the actual question")


def test_the_judge_never_sees_an_image_part(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    gw = judged(make_gateway)
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}}
    d = decide(gw, [{"type": "text", "text": "route:deep what is in this picture?"}, image])
    assert d["route"] == "deep"
    assert judge_saw(upstream) == "route:deep what is in this picture?"
    assert B64[:40] not in json.dumps(upstream.requests)
    upstream.clear()
    d = decide(gw, [image])  # nothing to judge: the judge abstains without a call
    assert (d["route"], d["trace"][-1]) == ("lite", {"strategy": "llm", "verdict": "abstained"})
    assert judge_calls(upstream) == []


# --- the pieces -----------------------------------------------------------------------------


def completion(content: Any) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"route": "deep", "confidence": 0.8, "reason": "hard"}', ("deep", 0.8, "hard")),
        ('```\n{"route": " Lite ", "confidence": "0.7"}\n```', ("lite", 0.7, "")),
        ('Sure. {"route": "deep", "confidence": 1.5, "reason": "a\\n b"} Done.', ("deep", 1.0, "a b")),
        ('{"route": "deep", "confidence": -2, "reason": "' + "r" * 500 + '"}', ("deep", 0.0, "r" * 199 + "…")),
    ],
)
def test_verdicts_are_normalised(content: str, expected: tuple[str, float, str]) -> None:
    v = parse_verdict(completion(content), ("lite", "deep"))
    assert (v.route, v.confidence, v.reason) == expected


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"<html>secret prompt</html>", "judge_invalid_output"),
        (completion(None), "judge_invalid_output"),
        (completion("secret prompt: deep"), "judge_invalid_output"),
        (completion('["deep", 0.9]'), "judge_invalid_output"),
        (completion('{"route": "deep"}'), "judge_invalid_output"),
        (completion('{"route": "deep", "confidence": true}'), "judge_invalid_output"),
        (completion('{"route": "deep", "confidence": "high"}'), "judge_invalid_output"),
        (completion('{"route": "deep", "confidence": 0.9, "reason": ["x"]}'), "judge_invalid_output"),
        (completion('{"route": "secret prompt", "confidence": 0.9}'), "judge_unknown_route"),
    ],
)
def test_unusable_verdicts_fail_without_quoting_the_answer(body: bytes, code: str) -> None:
    with pytest.raises(ClassificationFailed) as info:
        parse_verdict(body, ("lite", "deep"))
    assert info.value.code == code
    assert "secret" not in info.value.message


def test_only_mixed_base64_runs_are_replaced() -> None:
    sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert judged_text(f"is {sha} right?", 1000) == f"is {sha} right?"
    assert judged_text(f"key {B64[:64]} here", 1000) == "key [base64: 64 chars] here"
    assert judged_text("see data:application/pdf;base64,JVBERi0xLjQK then", 1000) == "see [file] then"
    assert re.fullmatch(r"\[long string: 4000 chars\]", judged_text("a" * 4000, 1000))
