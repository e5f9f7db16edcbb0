"""A per-process health snapshot of upstreams, written by the proxy and read by selection.

After `threshold` consecutive failures an upstream counts as down for `cooldown_s`; its targets are
tried after the healthy ones (never dropped, so a request still has somewhere to go). A 429 is
not ill health and does not count.
"""

from __future__ import annotations

import time


class HealthBoard:
    def __init__(self, threshold: int = 3, cooldown_s: float = 10.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._failures: dict[str, int] = {}
        self._down_until: dict[str, float] = {}

    def ok(self, upstream: str) -> None:
        if self._failures.get(upstream):
            self._failures[upstream] = 0
            self._down_until.pop(upstream, None)

    def failed(self, upstream: str) -> None:
        n = self._failures.get(upstream, 0) + 1
        self._failures[upstream] = n
        if n >= self.threshold:
            self._down_until[upstream] = time.monotonic() + self.cooldown_s

    def is_down(self, upstream: str) -> bool:
        until = self._down_until.get(upstream)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        # Cooldown over: half-open. One more failure does not mark it down again; `threshold` more do.
        del self._down_until[upstream]
        self._failures[upstream] = 0
        return False
