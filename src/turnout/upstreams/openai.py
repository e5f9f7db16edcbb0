"""The adapter for every OpenAI-compatible server (OpenAI, vLLM, Ollama, LiteLLM, OpenRouter, ...).

It sends one request over the upstream's pool of keep-alive connections (turnout.upstreams.http, which
raises turnout's UpstreamError kinds itself); aiohttp serves only the readiness probes. Retries and
fallback live in `turnout.proxy`.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from turnout.config import UpstreamConfig
from turnout.upstreams.http import ConnectionPool, HttpResponse


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class OpenAIUpstream:
    """One upstream: its pool of keep-alive connections for requests, and an aiohttp session for probes
    (created lazily inside the running loop)."""

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self._base = config.base_url.rstrip("/")
        headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._headers = CIMultiDict(headers)  # built once: aiohttp would copy a plain dict per request
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.first_byte_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None  # for probes only (off the request path)
        self._pool = ConnectionPool(
            name, self._base, headers, config.connect_timeout_s, config.first_byte_timeout_s, config.max_connections
        )

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.config.max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, json_serialize=lambda o: orjson.dumps(o).decode()
            )
        return self._session

    async def send(self, model: str, payload: bytes, stream: bool, path: str = "/chat/completions") -> HttpResponse:
        resp = await self._pool.post(path, payload)
        if resp.status in (429, 503):
            resp.retry_after = parse_retry_after(resp.header(b"retry-after"))
        return resp

    async def probe(self, timeout_s: float) -> tuple[bool, str, list[str]]:
        """GET /models: (reachable, a short human status, the model ids it lists)."""
        session = self._get_session()
        url = self.config.base_url.rstrip("/") + "/models"
        headers = {k: v for k, v in self._headers.items() if k.lower() != "content-type"}
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                async with session.get(url, headers=headers) as resp:
                    body = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else f"unreachable ({type(exc).__name__})"
            return False, reason, []
        ms = (time.perf_counter() - start) * 1000
        if resp.status in (401, 403):
            return False, f"rejected the API key (HTTP {resp.status} from /models)", []
        if resp.status != 200:  # up, but without a model list: chat may still work
            return resp.status < 500, f"answers, but HTTP {resp.status} from /models ({ms:.0f} ms)", []
        ids: list[str] = []
        try:
            data: Any = orjson.loads(body)
            ids = [str(m["id"]) for m in data.get("data", []) if isinstance(m, dict) and "id" in m]
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            pass
        return True, f"ok ({ms:.0f} ms)", ids

    async def close(self) -> None:
        self._pool.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
