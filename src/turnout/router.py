"""Routers: virtual models that turn a request into a Decision.

Order of play for one request:
  1. sticky: mid tool loop, a conversation keeps the route it already has (no re-classification);
  2. the configured strategies, in order; each decides or abstains (returns None);
  3. policy, applied here and not in strategies: a proposal below its threshold, or whose lead over
     the runner-up is below the margin, counts as an abstention;
  4. when every strategy abstained (or failed: an encoder that is down fails open), the fallback route.
Every strategy's verdict and time goes into the decision's trace.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from turnout.config import RouterConfig, Settings
from turnout.encoders import EmbeddingCache, EncoderSet
from turnout.errors import ClassificationFailed
from turnout.features import Features
from turnout.numbers import round4
from turnout.sessions import SessionRoutes
from turnout.strategies.rules import RulesStrategy
from turnout.strategies.semantic import SemanticStrategy
from turnout.types import Decision, RequestContext, Strategy, Upstream


class ExplicitStrategy:
    """Honours a route of this router named by `metadata.route` in the body or the `x-turnout-route` header."""

    name = "explicit"

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None:
        hint = ctx.route_hint
        if hint is None or hint not in routes:
            return None
        reason = f"route named by {ctx.route_hint_source}"
        return Decision(route=hint, strategy=self.name, confidence=1.0, reason=reason)


@dataclass
class Resources:
    """What strategies are built from; shared by every router of a gateway."""

    settings: Settings
    encoders: EncoderSet
    cache: EmbeddingCache
    upstreams: Mapping[str, Upstream]
    sessions: dict[str, SessionRoutes] = field(default_factory=dict)


StrategyFactory = Callable[[str, RouterConfig, Resources], Strategy]


def _semantic(name: str, cfg: RouterConfig, res: Resources) -> Strategy:
    return SemanticStrategy(name, cfg, res.settings, res.encoders, res.cache)


def _classifier(name: str, cfg: RouterConfig, res: Resources) -> Strategy:
    from turnout.strategies.classifier import ClassifierStrategy

    assert cfg.classifier is not None
    return ClassifierStrategy(name, cfg.classifier, res.encoders, tuple(cfg.routes))


def _llm(name: str, cfg: RouterConfig, res: Resources) -> Strategy:
    from turnout.strategies.llm import LLMJudgeStrategy

    assert cfg.llm is not None
    return LLMJudgeStrategy(name, cfg, res.settings, res.upstreams)


STRATEGY_KINDS: dict[str, StrategyFactory] = {
    "explicit": lambda name, cfg, res: ExplicitStrategy(),
    "rules": lambda name, cfg, res: RulesStrategy(name, cfg.rules),
    "semantic": _semantic,
    "classifier": _classifier,
    "llm": _llm,
}


class Router:
    def __init__(self, name: str, config: RouterConfig, strategies: list[Strategy], sessions: SessionRoutes,
                 route_thresholds: Mapping[str, float] | None = None) -> None:  # fmt: skip
        self.name = name
        self.config = config
        self.routes = tuple(config.routes)
        self.fallback = config.fallback
        self.strategies = strategies
        self.sessions = sessions
        self.route_thresholds = dict(route_thresholds or {})
        # Routers that only honour explicit hints skip feature extraction: it is the hot path.
        self.reads_text = any(s.name != "explicit" for s in strategies)
        self._prefetchers = [p for s in strategies if (p := getattr(s, "prefetch", None)) is not None]

    def features(self, ctx: RequestContext) -> Features:
        if ctx.features is None:
            conv = self.config.conversation
            ctx.features = Features(ctx.body, window=conv.window, max_chars=self.config.max_chars)
        return ctx.features

    async def start(self) -> None:
        for s in self.strategies:
            start = getattr(s, "start", None)
            if start is not None:
                await start()

    def policy(self, strategy: str, route: str) -> tuple[float | None, float | None]:
        """(threshold, margin) the router holds a strategy's proposal to."""
        c = self.config
        if strategy == "semantic":
            return self.route_thresholds.get(route, c.semantic.threshold), c.semantic.margin
        if strategy == "classifier" and c.classifier is not None:
            return getattr(self._strategy("classifier"), "policy", (c.classifier.threshold, c.classifier.margin))
        if strategy == "llm" and c.llm is not None:
            return c.llm.threshold, None
        return None, None

    def _strategy(self, name: str) -> Strategy | None:
        return next((s for s in self.strategies if s.name == name), None)

    @staticmethod
    def _verdict(d: Decision, threshold: float | None, margin: float | None) -> str:
        if threshold is not None and (d.confidence is None or d.confidence < threshold):
            return "below_threshold"
        if margin is not None and len(d.scores) > 1:
            ranked = sorted(d.scores.values(), reverse=True)
            if ranked[0] - ranked[1] < margin:
                return "below_margin"
        return "decided"

    async def decide(self, ctx: RequestContext, exhaustive: bool = False) -> Decision:
        """The decision. With `exhaustive`, every strategy runs and reports its proposal in the trace even
        after one has decided (for `turnout calibrate`); the decision itself is the same."""
        start = time.perf_counter()
        timings: dict[str, float] = {}
        trace: list[dict[str, Any]] = []
        failed: list[str] = []
        nearest: Decision | None = None  # the last proposal policy turned down
        decision = self._sticky(ctx) if self.reads_text else None
        if decision is None:
            if self.reads_text:
                self.features(ctx)
            prefetched = False
            for strategy in self.strategies:
                if not prefetched and strategy.name != "explicit":
                    # past the free hints: encoders start on their threads now, rules run while they work
                    prefetched = True
                    for prefetch in self._prefetchers:
                        # an encoder that cannot start fails again inside the strategy's fail-open guard
                        with contextlib.suppress(Exception):
                            prefetch(ctx)
                t0 = time.perf_counter()
                try:
                    proposal = await strategy.decide(ctx, self.routes)
                except ClassificationFailed as exc:
                    proposal = None
                    failed.append(strategy.name)
                    trace.append({"strategy": strategy.name, "verdict": "failed", "error": exc.code})
                ms = round4((time.perf_counter() - t0) * 1000)
                timings[strategy.name] = ms
                if proposal is None:
                    if not trace or trace[-1]["strategy"] != strategy.name:
                        trace.append({"strategy": strategy.name, "verdict": "abstained"})
                    continue
                threshold, margin = self.policy(strategy.name, proposal.route)
                verdict = self._verdict(proposal, threshold, margin)
                trace.append({"strategy": strategy.name, "verdict": verdict, "route": proposal.route,
                              "confidence": proposal.confidence, "scores": proposal.scores})  # fmt: skip
                proposal.threshold, proposal.margin = threshold, margin
                if decision is not None:
                    continue  # exhaustive: already decided, only recording
                if verdict == "decided":
                    decision = proposal
                    if not exhaustive:
                        break
                else:
                    nearest = proposal
        if decision is None:
            reason = "every strategy abstained"
            if failed:
                reason = f"{', '.join(failed)} failed; failing open to the fallback route"
            decision = Decision(route=self.fallback, strategy="fallback", reason=reason)
            if nearest is not None:  # keep the nearest miss's scores, for explain and calibrate
                decision.scores = nearest.scores
                decision.threshold, decision.margin = nearest.threshold, nearest.margin
                decision.provenance = nearest.provenance
        if ctx.features is not None:
            ctx.features.drop_prefetched()
        decision.router = self.name
        decision.strategy_ms = timings
        decision.trace = trace
        # `signals` are filled in off the hot path, by explain (and by records later).
        if ctx.session and self.reads_text:
            self.sessions.put(self.name, ctx.session, decision.route)
        decision.elapsed_ms = (time.perf_counter() - start) * 1000
        return decision

    def _sticky(self, ctx: RequestContext) -> Decision | None:
        conv = self.config.conversation
        if not (conv.sticky and ctx.session):
            return None
        features = self.features(ctx)
        if not features.in_tool_loop:
            return None
        route = self.sessions.get(self.name, ctx.session)
        if route is None or route not in self.routes:
            return None
        return Decision(route=route, strategy="sticky", confidence=1.0,
                        reason="mid tool loop: the conversation keeps its route")  # fmt: skip


def build_routers(settings: Settings, resources: Resources) -> dict[str, Router]:
    routers = {}
    for name, cfg in settings.routers.items():
        sessions = resources.sessions.setdefault(
            name, SessionRoutes(cfg.conversation.session_ttl_s, cfg.conversation.max_sessions)
        )
        strategies = [STRATEGY_KINDS[s](name, cfg, resources) for s in cfg.strategies]
        thresholds = {r: t for r in cfg.routes if (t := settings.routes[r].threshold) is not None}
        routers[name] = Router(name, cfg, strategies, sessions, thresholds)
    return routers
