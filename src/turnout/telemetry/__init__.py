"""Telemetry: one RequestRecord per finished request, fanned out to sinks that never feed back.

`Telemetry.emit` is called once per request, after the response is complete (for a stream: when it
closes). A sink queues or updates in memory and returns; a failing sink is logged once and never
affects the request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from turnout.config import Settings
from turnout.types import RequestRecord, Sink

log = logging.getLogger("turnout")


class Telemetry:
    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.sinks = list(sinks)
        self._broken: set[int] = set()

    def emit(self, record: RequestRecord) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                sink.emit(record)
            except Exception:
                if i not in self._broken:
                    self._broken.add(i)
                    log.exception("telemetry sink %s failed; its later failures are not logged", type(sink).__name__)

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()

    async def close(self) -> None:
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception:
                log.exception("telemetry sink %s failed to close", type(sink).__name__)


def build_sinks(settings: Settings) -> list[Sink]:
    """The sinks the config turns on. Each capability registers here."""
    sinks: list[Sink] = []
    return sinks
