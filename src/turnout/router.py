"""Routers: virtual models that turn a request into a Decision.

Strategies run in the configured order; the first that does not abstain decides. When all abstain,
the router's fallback route is the decision. Policy (order, fallback) lives here, not in strategies.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from turnout.config import RouterConfig, Settings
from turnout.types import Decision, RequestContext, Strategy


class ExplicitStrategy:
    """Honours a route of this router named by `metadata.route` in the body or the `x-turnout-route` header."""

    name = "explicit"

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None:
        hint = ctx.route_hint
        if hint is None or hint not in routes:
            return None
        reason = f"route named by {ctx.route_hint_source}"
        return Decision(route=hint, strategy=self.name, confidence=1.0, reason=reason)


STRATEGY_KINDS: dict[str, Callable[[Settings], Strategy]] = {
    "explicit": lambda settings: ExplicitStrategy(),
}


class Router:
    def __init__(self, name: str, config: RouterConfig, strategies: list[Strategy]) -> None:
        self.name = name
        self.routes = tuple(config.routes)
        self.fallback = config.fallback
        self.strategies = strategies

    async def decide(self, ctx: RequestContext) -> Decision:
        start = time.perf_counter()
        timings: dict[str, float] = {}
        decision: Decision | None = None
        for strategy in self.strategies:
            t0 = time.perf_counter()
            decision = await strategy.decide(ctx, self.routes)
            timings[strategy.name] = round((time.perf_counter() - t0) * 1000, 4)
            if decision is not None:
                break
        if decision is None:
            decision = Decision(route=self.fallback, strategy="fallback", reason="every strategy abstained")
        decision.router = self.name
        decision.strategy_ms = timings
        decision.elapsed_ms = (time.perf_counter() - start) * 1000
        return decision


def build_routers(settings: Settings) -> dict[str, Router]:
    return {
        name: Router(name, cfg, [STRATEGY_KINDS[s](settings) for s in cfg.strategies])
        for name, cfg in settings.routers.items()
    }
