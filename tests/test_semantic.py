"""The semantic strategy with the real bundled encoder, in process and through a real gateway."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory, UpstreamThread, free_port
from turnout.config import validate
from turnout.gateway import Gateway
from turnout.types import Decision, RequestContext
from turnout.upstreams import build_upstream

ROUTES: dict[str, Any] = {
    "lite": {"description": "small talk", "targets": ["small"],
             "utterances": ["hi, how are you?", "thanks a lot", "tell me a joke", "good morning!"]},
    "code": {"description": "programming", "targets": ["small"], "threshold": 0.9,
             "utterances": ["write a python function", "fix this javascript bug", "explain this SQL query"]},
    "math": {"description": "maths", "targets": ["small"],
             "utterances": ["solve this equation for x", "what is the derivative of x squared",
                            "compute the integral of sin x"]},
}  # fmt: skip


def config(tmp: Path, **semantic: Any) -> dict[str, Any]:
    return {
        "upstreams": {"u": {"base_url": f"http://127.0.0.1:{free_port()}/v1"}},
        "models": {"small": {"upstream": "u", "name": "m"}},
        "routes": ROUTES,
        "routers": {"auto": {"routes": ["lite", "code", "math"], "strategies": ["semantic"], "fallback": "lite",
                             "semantic": {"threshold": 0.2, "margin": 0.0, **semantic}}},
        "runtime_dir": str(tmp),
    }  # fmt: skip


class Decider:
    def __init__(self, raw: dict[str, Any]) -> None:
        settings = validate(raw, {})
        self.gw = Gateway(settings, {n: build_upstream(n, c) for n, c in settings.upstreams.items()})
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.gw.start())

    def __call__(self, text: str) -> Decision:
        body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        return self.loop.run_until_complete(self.gw.decide(RequestContext(uuid.uuid4().hex, body, "auto", False)))

    def close(self) -> None:
        self.loop.run_until_complete(self.gw.close())
        self.loop.close()


@pytest.fixture(scope="module")
def decide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decider]:
    d = Decider(config(tmp_path_factory.mktemp("rt")))
    yield d
    d.close()


def test_routes_to_the_route_with_the_closest_utterances(decide: Decider) -> None:
    d = decide("what's the derivative of x cubed?")
    assert (d.route, d.strategy) == ("math", "semantic")
    assert d.confidence is not None and d.confidence == d.scores["math"] > d.scores["lite"]
    assert d.threshold == 0.2 and d.margin == 0.0


def test_chinese_prompts_match_english_utterances(decide: Decider) -> None:
    assert decide("求 x 平方的导数").route == "math"
    assert decide("你好，最近怎么样？").route == "lite"


def test_provenance_names_utterances_by_id_never_by_text(decide: Decider) -> None:
    d = decide("solve 2x + 3 = 7 for x")
    assert d.provenance and all(p.startswith("math#") for p in d.provenance)
    assert "equation" not in repr(d.as_dict())


def test_a_per_route_threshold_overrides_the_routers(decide: Decider) -> None:
    d = decide("write a python function that sorts a list")
    assert d.route == "lite" and d.strategy == "fallback"  # `code` needs 0.9
    semantic = next(t for t in d.trace if t["strategy"] == "semantic")
    assert semantic["verdict"] == "below_threshold" and semantic["route"] == "code"
    assert d.scores["code"] > d.scores["math"]  # the nearest miss is kept for explain and calibrate


def test_below_the_margin_the_router_falls_back(tmp_path: Path) -> None:
    d = Decider(config(tmp_path, margin=0.99))
    try:
        out = d("what's the derivative of x cubed?")
        assert (out.route, out.strategy) == ("lite", "fallback")
        assert out.trace[-1]["verdict"] == "below_margin"
    finally:
        d.close()


def test_utterance_embeddings_are_cached_on_disk(tmp_path: Path) -> None:
    Decider(config(tmp_path)).close()
    files = list((tmp_path / "embeddings").glob("*.npz"))
    assert len(files) == 1 and files[0].stat().st_size > 10 * 512 * 4
    mtime = files[0].stat().st_mtime_ns
    Decider(config(tmp_path)).close()  # nothing new to embed: the file is not rewritten
    assert files[0].stat().st_mtime_ns == mtime


def test_a_dead_encoder_fails_open_to_the_fallback(tmp_path: Path) -> None:
    raw = config(tmp_path, encoder="remote")
    raw["encoders"] = {"remote": {"kind": "openai", "upstream": "u", "model": "embed", "timeout_s": 0.5}}
    settings = validate(raw, {})
    gw = Gateway(settings, {n: build_upstream(n, c) for n, c in settings.upstreams.items()})
    body = {"model": "auto", "messages": [{"role": "user", "content": "solve x + 1 = 2"}]}

    async def run() -> Decision:
        try:
            return await gw.decide(RequestContext("id", body, "auto", False))
        finally:
            await gw.close()
            for up in gw.upstreams.values():
                await up.close()

    d = asyncio.run(run())
    assert (d.route, d.strategy) == ("lite", "fallback")
    assert d.reason == "semantic failed; failing open to the fallback route"
    assert d.trace == [{"strategy": "semantic", "verdict": "failed", "error": "encoder_error"}]


def test_gateway_routes_by_meaning_and_reports_it(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = make_gateway(
        routes={"lite": {"targets": ["lite-model"], "utterances": ["hi there", "thanks!", "tell me a joke"]},
                "deep": {"targets": ["deep-model"],
                         "utterances": ["prove this theorem rigorously", "design a distributed system"]}},
        routers={"auto": {"routes": ["lite", "deep"], "strategies": ["explicit", "rules", "semantic"],
                          "fallback": "lite", "semantic": {"threshold": 0.1, "margin": 0.0},
                          "rules": [{"name": "outage", "route": "deep", "banks": ["production_outage"]}]}},
        runtime_dir=str(tmp_path),
    )  # fmt: skip
    chat = gw.url + "/v1/chat/completions"
    r = httpx.post(chat, json={"model": "auto", "messages": [{"role": "user", "content": "证明这个定理"}]})
    assert r.status_code == 200
    assert (r.headers["x-turnout-route"], r.headers["x-turnout-strategy"]) == ("deep", "semantic")
    assert 0 < float(r.headers["x-turnout-confidence"]) <= 1
    r = httpx.post(chat, json={"model": "auto", "messages": [{"role": "user", "content": "prod is down!!"}]})
    assert (r.headers["x-turnout-route"], r.headers["x-turnout-strategy"]) == ("deep", "rules")
    ready = httpx.get(gw.url + "/ready").json()
    assert ready["utterances"] == {"auto": {"lite": 3, "deep": 2}}
    explain = httpx.post(gw.url + "/v1/route", json={"model": "auto", "text": "hi there"}).json()["decision"]
    assert explain["route"] == "lite" and explain["signals"]["lang"] == "en"
    assert set(explain["strategy_ms"]) == {"explicit", "rules", "semantic"}


def test_a_remote_embeddings_endpoint_can_be_the_encoder(
    make_gateway: GatewayFactory, upstream: UpstreamThread
) -> None:
    gw = make_gateway(
        encoders={"remote": {"kind": "openai", "upstream": "fake", "model": "embed-small", "timeout_s": 2}},
        routes={"lite": {"targets": ["lite-model"], "utterances": ["tell me a joke", "good morning friend"]},
                "deep": {"targets": ["deep-model"], "utterances": ["prove the theorem", "design the system"]}},
        routers={"auto": {"routes": ["lite", "deep"], "strategies": ["semantic"], "fallback": "lite",
                          "semantic": {"encoder": "remote", "dense_weight": 1.0, "threshold": 0.3}}},
    )  # fmt: skip
    r = httpx.post(gw.url + "/v1/route", json={"model": "auto", "text": "please prove the theorem"})
    d = r.json()["decision"]
    assert (d["route"], d["strategy"]) == ("deep", "semantic")
    embed_calls = [q for q in upstream.requests if q["path"] == "/v1/embeddings"]
    assert embed_calls[-1]["body"] == {"model": "embed-small", "input": ["please prove the theorem"]}
