"""What is configured and what is reachable: the start-up summary and `GET /ready`.

Upstreams are probed (`GET {base_url}/models`) in the background at start-up and again when
`/ready` asks after the last probe went stale; a probe never blocks start-up or a chat request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from turnout.config import Settings
from turnout.gateway import Gateway

log = logging.getLogger("turnout")

PROBE_TIMEOUT_S = 2.0
STALE_AFTER_S = 5.0


class Readiness:
    def __init__(self, settings: Settings, source: str, gateway: Gateway) -> None:
        self.settings = settings
        self.source = source
        self.gateway = gateway
        self.probes: dict[str, dict[str, Any]] = {}
        self._probed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._startup())

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _startup(self) -> None:
        s = self.settings
        log.info("turnout config: %s", self.source)
        for name, live in self.gateway.routers.items():
            for strategy in live.strategies:
                counts = getattr(strategy, "counts", None)
                if counts:
                    listed = ", ".join(f"{r} {n}" for r, n in counts.items())
                    log.info("router `%s`: semantic bank loaded (%s utterances)", name, listed)
        for name, router in s.routers.items():
            log.info("router `%s`: routes %s, strategies %s, fallback `%s`", name, ", ".join(router.routes),
                     ", ".join(router.strategies), router.fallback)  # fmt: skip
        for name, route in s.routes.items():
            log.info("route `%s`: targets %s", name, " -> ".join(route.targets))
        await self.probe()
        for name, p in self.probes.items():
            level = logging.INFO if p["reachable"] else logging.WARNING
            log.log(level, "upstream `%s` (%s): %s", name, self.settings.upstreams[name].base_url, p["status"])

    async def probe(self) -> None:
        async with self._lock:
            if time.monotonic() - self._probed_at < STALE_AFTER_S and self.probes:
                return
            names = list(self.gateway.upstreams)
            results = await asyncio.gather(*(self.gateway.upstreams[n].probe(PROBE_TIMEOUT_S) for n in names))
            self.probes = {
                n: {"reachable": ok, "status": status, "models_listed": len(ids)}
                for n, (ok, status, ids) in zip(names, results, strict=True)
            }
            self._probed_at = time.monotonic()

    async def report(self) -> dict[str, Any]:
        await self.probe()
        s = self.settings
        reachable = {n for n, p in self.probes.items() if p["reachable"]}
        routes = {
            name: {
                "targets": len(route.targets),
                "reachable_targets": sum(s.models[t].upstream in reachable for t in route.targets),
            }
            for name, route in s.routes.items()
        }
        unserved = [name for name, r in routes.items() if not r["reachable_targets"]]
        banks = {
            name: getattr(strategy, "counts", {})
            for name, router in self.gateway.routers.items()
            for strategy in router.strategies
            if strategy.name == "semantic"
        }
        return {
            "ready": not unserved,
            "config": self.source,
            "utterances": banks,
            "routers": {n: r.model_dump(include={"routes", "strategies", "fallback"}) for n, r in s.routers.items()},
            "routes": routes,
            "upstreams": self.probes,
            "passthrough": s.passthrough.upstream if s.passthrough.enabled else None,
            "problems": [f"route `{n}` has no reachable target" for n in unserved],
        }
