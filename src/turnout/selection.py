"""Selection: turns a route into the ordered targets that can serve this request.

Targets whose model lacks a capability the request needs (tools, images, audio, context length) are
dropped before anything is sent; targets on an upstream that is down go last.
"""

from __future__ import annotations

from typing import Any

from turnout.config import ModelConfig, Settings
from turnout.errors import NoCapableTarget
from turnout.health import HealthBoard
from turnout.types import Target


def requirements(body: dict[str, Any]) -> tuple[set[str], int]:
    """Capabilities the request needs and a rough token estimate (4 characters a token)."""
    needs: set[str] = set()
    if body.get("tools") or body.get("functions"):
        needs.add("tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        needs.add("json_mode")
    chars = 0
    for msg in body.get("messages", ()):
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                kind = part.get("type")
                if kind in ("image_url", "image"):
                    needs.add("vision")
                elif kind in ("input_audio", "audio"):
                    needs.add("audio")
                elif isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return needs, chars // 4 + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)


class Selector:
    def __init__(self, settings: Settings, health: HealthBoard) -> None:
        self._models = settings.models
        self._health = health
        self._targets = {
            route: [Target(key, settings.models[key].upstream, settings.models[key].name) for key in cfg.targets]
            for route, cfg in settings.routes.items()
        }
        # Only routes with declared limits pay for scanning the request.
        self._checked = {
            route
            for route, cfg in settings.routes.items()
            if any(self._limited(settings.models[k]) for k in cfg.targets)
        }

    @staticmethod
    def _limited(model: ModelConfig) -> bool:
        return model.capabilities is not None or model.context_window is not None

    def targets(self, route: str, body: dict[str, Any]) -> list[Target]:
        targets = self._targets[route]
        if route in self._checked:
            needs, tokens = requirements(body)
            kept = [t for t in targets if self._can_serve(self._models[t.key], needs, tokens)]
            if not kept:
                wanted = ", ".join(sorted(needs)) or "no special capability"
                raise NoCapableTarget(
                    f"no target of route `{route}` can serve this request (needs: {wanted}; ~{tokens} tokens)"
                )
            targets = kept
        if any(self._health.is_down(t.upstream) for t in targets):
            targets = sorted(targets, key=lambda t: self._health.is_down(t.upstream))
        return targets

    @staticmethod
    def _can_serve(model: ModelConfig, needs: set[str], tokens: int) -> bool:
        if model.capabilities is not None and not needs.issubset(model.capabilities):
            return False
        return model.context_window is None or tokens <= model.context_window
