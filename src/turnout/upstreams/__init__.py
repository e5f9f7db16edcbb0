"""Upstream adapters, one per protocol. `UPSTREAM_KINDS` maps the config's `kind` to its class."""

from __future__ import annotations

from collections.abc import Callable

from turnout.config import UpstreamConfig
from turnout.types import Upstream
from turnout.upstreams.openai import OpenAIUpstream

UPSTREAM_KINDS: dict[str, Callable[[str, UpstreamConfig], Upstream]] = {"openai": OpenAIUpstream}


def build_upstream(name: str, config: UpstreamConfig) -> Upstream:
    return UPSTREAM_KINDS[config.kind](name, config)
