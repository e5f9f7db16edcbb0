"""Placeholder replaced by the classifier work in progress."""

from __future__ import annotations

from turnout.config import ClassifierConfig
from turnout.encoders import EncoderSet
from turnout.errors import ConfigError
from turnout.types import Decision, RequestContext


class ClassifierStrategy:
    name = "classifier"

    def __init__(self, router: str, config: ClassifierConfig, encoders: EncoderSet) -> None:
        raise ConfigError(f"routers.{router}.classifier: not available yet")

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None:
        return None
