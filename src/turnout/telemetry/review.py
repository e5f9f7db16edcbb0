"""Placeholder: the prompt review log is being written."""

from __future__ import annotations

from typing import Any

from turnout.config import Settings
from turnout.types import RequestRecord


class PromptReviewLog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def capture(self, record: RequestRecord, body: dict[str, Any]) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
