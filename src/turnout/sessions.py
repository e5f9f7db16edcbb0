"""Which route each conversation is on, so an agent's tool loop never bounces between models.

In memory, per process, bounded (least recently used go first) and expiring after a TTL.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class SessionRoutes:
    def __init__(self, ttl_s: float = 3600.0, max_sessions: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._routes: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def get(self, router: str, session: str) -> str | None:
        key = (router, session)
        hit = self._routes.get(key)
        if hit is None:
            return None
        route, expires = hit
        if expires < time.monotonic():
            del self._routes[key]
            return None
        self._routes.move_to_end(key)
        return route

    def put(self, router: str, session: str, route: str) -> None:
        key = (router, session)
        self._routes[key] = (route, time.monotonic() + self.ttl_s)
        self._routes.move_to_end(key)
        while len(self._routes) > self.max_sessions:
            self._routes.popitem(last=False)

    def __len__(self) -> int:
        return len(self._routes)
