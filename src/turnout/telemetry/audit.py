"""Placeholder: the audit log is being written."""

from __future__ import annotations

from turnout.config import Settings
from turnout.types import RequestRecord


class AuditSink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def emit(self, record: RequestRecord) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
