"""Placeholder replaced by the LLM judge work in progress."""

from __future__ import annotations

from collections.abc import Mapping

from turnout.config import RouterConfig, Settings
from turnout.errors import ConfigError
from turnout.types import Decision, RequestContext, Upstream


class LLMJudgeStrategy:
    name = "llm"

    def __init__(
        self, router: str, config: RouterConfig, settings: Settings, upstreams: Mapping[str, Upstream]
    ) -> None:
        raise ConfigError(f"routers.{router}.llm: not available yet")

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None:
        return None
