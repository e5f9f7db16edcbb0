"""The one module that knows the stage order: decide, select, forward.

Guards and the cache slot in here (before the decision and before forwarding) in later issues.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from turnout.config import Settings
from turnout.encoders import EmbeddingCache, EncoderSet
from turnout.errors import ModelNotFound, RequestError
from turnout.features import Features
from turnout.health import HealthBoard
from turnout.proxy import Outcome, Proxy
from turnout.router import Resources, build_routers
from turnout.selection import Selector
from turnout.types import Decision, RequestContext, Target, Upstream

PASSTHROUGH = "passthrough"


class Gateway:
    def __init__(self, settings: Settings, upstreams: Mapping[str, Upstream]) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.health = HealthBoard(settings.proxy.unhealthy_after, settings.proxy.unhealthy_cooldown_s)
        self.encoders = EncoderSet(settings.encoders, upstreams)
        self.resources = Resources(settings, self.encoders, EmbeddingCache(settings.runtime_dir), upstreams)
        self.routers = build_routers(settings, self.resources)
        self.selector = Selector(settings, self.health)
        self.proxy = Proxy(settings.proxy, upstreams, self.health)
        p = settings.passthrough
        self.passthrough_upstream = p.upstream if p.enabled else None

    async def start(self) -> None:
        """Load what routing needs before the first request: encoders, utterance embeddings."""
        for router in self.routers.values():
            await router.start()

    async def close(self) -> None:
        await self.encoders.close()

    def client_models(self) -> list[str]:
        """The model names a client may ask for: routers, then routes."""
        return [*self.routers, *self.settings.routes]

    async def decide(self, ctx: RequestContext) -> Decision:
        """The Decision for a request, without forwarding anything."""
        router = self.routers.get(ctx.model)
        hint = ctx.route_hint
        if hint is not None and (hint not in self.settings.routes or (router and hint not in router.routes)):
            allowed = router.routes if router else tuple(self.settings.routes)
            where = f"router `{router.name}`'s routes" if router else "known routes"
            raise RequestError(
                f"unknown route `{hint}` in {ctx.route_hint_source}; {where}: {', '.join(f'`{r}`' for r in allowed)}",
                param="metadata.route" if ctx.route_hint_source == "`metadata.route`" else None,
                code="unknown_route",
            )
        if router is not None:
            return await router.decide(ctx)
        start = time.perf_counter()
        if ctx.model in self.settings.routes:
            decision = Decision(route=ctx.model, strategy="explicit", confidence=1.0, reason="model names a route")
        elif self.passthrough_upstream is not None:
            decision = Decision(route=PASSTHROUGH, strategy=PASSTHROUGH, reason="model passed through unchanged")
        else:
            names = ", ".join(f"`{m}`" for m in self.client_models())
            raise ModelNotFound(
                f"model `{ctx.model}` is not a router or a route of this gateway; use one of: {names}", param="model"
            )
        decision.elapsed_ms = (time.perf_counter() - start) * 1000
        return decision

    def targets(self, ctx: RequestContext, decision: Decision) -> list[Target]:
        if decision.strategy == PASSTHROUGH and self.passthrough_upstream is not None:
            return [Target(ctx.model, self.passthrough_upstream, ctx.model)]
        return self.selector.targets(decision.route, ctx.body)

    async def handle(self, ctx: RequestContext) -> Outcome:
        ctx.decision = decision = await self.decide(ctx)
        targets = self.targets(ctx, decision)
        outcome = await self.proxy.forward(decision.route, targets, ctx.body, ctx.stream, ctx.attempts, ctx.started)
        ctx.target = outcome.target
        return outcome

    async def explain(self, ctx: RequestContext) -> dict[str, Any]:
        """The decision and the targets it would try, as `POST /v1/route` and `turnout route` show them."""
        ctx.decision = decision = await self.decide(ctx)
        if not decision.signals:
            router = self.routers.get(ctx.model)
            features = router.features(ctx) if router else Features(ctx.body)
            decision.signals = features.signals()
        targets = self.targets(ctx, decision)
        expose = self.settings.expose_models or decision.strategy == PASSTHROUGH
        return {
            "id": ctx.request_id,
            "object": "turnout.decision",
            "model": ctx.model,
            "decision": decision.as_dict(),
            "targets": [
                {"model": t.key, "upstream": t.upstream, **({"name": t.name} if expose else {})} for t in targets
            ],
        }
