"""Routers, strategies and the gateway's decision, in process."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import GatewayFactory, UpstreamThread
from tests.test_config import minimal
from turnout.config import validate
from turnout.errors import ModelNotFound, RequestError
from turnout.gateway import Gateway
from turnout.router import ExplicitStrategy, Router
from turnout.sessions import SessionRoutes
from turnout.types import Decision, RequestContext


def ctx(model: str, hint: str | None = None) -> RequestContext:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return RequestContext("id", body, model, False, hint, "the `x-turnout-route` header" if hint else None)


def two_routes() -> Gateway:
    raw = minimal()
    raw["routes"]["deep"] = {"targets": ["small"]}
    raw["routers"]["auto"] = {"routes": ["lite", "deep"], "fallback": "lite"}
    return Gateway(validate(raw, {}), {})


class Abstains:
    name = "abstains"

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None:
        return None


class AlwaysDeep:
    name = "always-deep"

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None:
        return Decision(route="deep", strategy=self.name, confidence=0.0)


def test_first_strategy_that_speaks_decides_and_every_strategy_is_timed() -> None:
    cfg = validate(minimal(), {}).routers["auto"]
    router = Router("auto", cfg, [Abstains(), AlwaysDeep(), Abstains()], SessionRoutes())
    d = asyncio.run(router.decide(ctx("auto")))
    assert (d.route, d.strategy, d.router, d.confidence) == ("deep", "always-deep", "auto", 0.0)
    assert list(d.strategy_ms) == ["abstains", "always-deep"]


def test_when_every_strategy_abstains_the_fallback_route_decides() -> None:
    cfg = validate(minimal(), {}).routers["auto"]
    d = asyncio.run(Router("auto", cfg, [Abstains()], SessionRoutes()).decide(ctx("auto")))
    assert (d.route, d.strategy, d.reason) == ("lite", "fallback", "every strategy abstained")


def test_explicit_strategy_abstains_without_a_known_hint() -> None:
    s = ExplicitStrategy()
    assert asyncio.run(s.decide(ctx("auto"), ("lite", "deep"))) is None
    assert asyncio.run(s.decide(ctx("auto", "code"), ("lite", "deep"))) is None
    d = asyncio.run(s.decide(ctx("auto", "deep"), ("lite", "deep")))
    assert d is not None and (d.route, d.confidence) == ("deep", 1.0)
    assert d.reason == "route named by the `x-turnout-route` header"


def test_gateway_decides_router_route_and_unknown_models() -> None:
    gw = two_routes()
    assert asyncio.run(gw.decide(ctx("auto", "deep"))).route == "deep"
    d = asyncio.run(gw.decide(ctx("deep")))
    assert (d.route, d.strategy, d.router) == ("deep", "explicit", None)
    with pytest.raises(ModelNotFound, match="use one of: `auto`, `lite`, `deep`"):
        asyncio.run(gw.decide(ctx("gpt-4o")))
    with pytest.raises(RequestError, match="unknown route `huge`"):
        asyncio.run(gw.decide(ctx("auto", "huge")))


def test_a_route_hint_outside_the_router_is_refused() -> None:
    raw = minimal()
    raw["routes"]["deep"] = {"targets": ["small"]}
    gw = Gateway(validate(raw, {}), {})  # router `auto` covers only `lite`
    with pytest.raises(RequestError, match="router `auto`'s routes: `lite`"):
        asyncio.run(gw.decide(ctx("auto", "deep")))


def test_passthrough_targets_the_configured_upstream_with_the_model_unchanged() -> None:
    gw = Gateway(validate(minimal(passthrough={"enabled": True, "upstream": "local"}), {}), {})
    c = ctx("org/model-x")
    d = asyncio.run(gw.decide(c))
    assert d.strategy == "passthrough"
    [target] = gw.targets(c, d)
    assert (target.upstream, target.name) == ("local", "org/model-x")


def test_every_strategy_the_config_accepts_has_an_implementation() -> None:
    from turnout.config import STRATEGY_NAMES
    from turnout.router import STRATEGY_KINDS

    assert set(STRATEGY_NAMES) == set(STRATEGY_KINDS)


def test_mid_tool_loop_a_conversation_keeps_its_route(make_gateway: GatewayFactory, upstream: UpstreamThread) -> None:
    rules = [{"name": "proof", "route": "deep", "keywords": ["prove"]}]
    gw = make_gateway(routers={"auto": {"routes": ["lite", "deep"], "strategies": ["explicit", "rules"],
                                        "fallback": "lite", "rules": rules}})  # fmt: skip
    chat = gw.url + "/v1/chat/completions"
    first = [{"role": "user", "content": "prove that the algorithm terminates"}]
    r = httpx.post(chat, json={"model": "auto", "messages": first}, headers={"x-turnout-session": "s1"})
    assert (r.headers["x-turnout-route"], r.headers["x-turnout-strategy"]) == ("deep", "rules")
    loop = [{"role": "user", "content": "ok thanks"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                   "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}]  # fmt: skip
    r = httpx.post(chat, json={"model": "auto", "messages": loop}, headers={"x-turnout-session": "s1"})
    assert (r.headers["x-turnout-route"], r.headers["x-turnout-strategy"]) == ("deep", "sticky")
    # the same conversation key from the body, and another conversation that is not in a tool loop
    r = httpx.post(chat, json={"model": "auto", "messages": loop, "metadata": {"session_id": "s1"}})
    assert r.headers["x-turnout-strategy"] == "sticky"
    r = httpx.post(chat, json={"model": "auto", "messages": loop, "user": "someone-else"})
    assert (r.headers["x-turnout-route"], r.headers["x-turnout-strategy"]) == ("lite", "fallback")
    assert upstream.requests[2]["body"]["metadata"] == {"session_id": "s1"}  # not ours to strip


def test_session_routes_expire_and_stay_bounded() -> None:
    s = SessionRoutes(ttl_s=0.05, max_sessions=2)
    s.put("auto", "a", "deep")
    s.put("auto", "b", "lite")
    s.put("auto", "c", "lite")
    assert s.get("auto", "a") is None and len(s) == 2
    assert s.get("auto", "c") == "lite"
    time.sleep(0.06)
    assert s.get("auto", "c") is None
