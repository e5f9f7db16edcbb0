"""The adapter for every OpenAI-compatible server (OpenAI, vLLM, Ollama, LiteLLM, OpenRouter, ...).

It sends one request and translates aiohttp's errors into turnout's at exactly one boundary
(`_translated`). Retries and fallback live in `turnout.proxy`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from turnout.config import UpstreamConfig
from turnout.errors import UpstreamConnectError, UpstreamDropped, UpstreamError, UpstreamTimeout


def translated(upstream: str, exc: BaseException) -> UpstreamError:
    """An aiohttp or socket error as an UpstreamError subclass, most specific first."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, (aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError, TimeoutError)):
        return UpstreamTimeout(f"upstream `{upstream}` timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(f"cannot connect to upstream `{upstream}`")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
        return UpstreamDropped(f"upstream `{upstream}` dropped the connection")
    return UpstreamError(f"upstream `{upstream}` failed ({type(exc).__name__})")


@contextmanager
def _translated(upstream: str) -> Iterator[None]:
    """Map aiohttp and socket errors to UpstreamError subclasses (see `translated`)."""
    try:
        yield
    except UpstreamError:
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise translated(upstream, exc) from exc


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


class OpenAIResponse:
    __slots__ = ("_resp", "_upstream", "content_type", "retry_after", "status")

    def __init__(self, resp: aiohttp.ClientResponse, upstream: str) -> None:
        self._resp = resp
        self._upstream = upstream
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "application/json")
        self.retry_after = parse_retry_after(resp.headers.get("Retry-After")) if resp.status in (429, 503) else None

    async def read(self) -> bytes:
        with _translated(self._upstream):
            try:
                return await self._resp.read()
            except BaseException:
                self._resp.close()
                raise
            finally:
                self._resp.release()

    async def next_chunk(self) -> bytes:
        """The next part of the body, as much as has arrived; b"" once it is complete, and the connection
        then goes back to the pool. Any failure closes the connection. One plain call per chunk: a stream
        relays ~20 of them, and each layer of async generator around the reads cost ~1-2 us per chunk."""
        try:
            data = await self._resp.content.readany()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._resp.close()
            raise translated(self._upstream, exc) from exc
        except BaseException:
            self._resp.close()
            raise
        if not data:
            self._resp.release()
        return data

    def close(self) -> None:
        self._resp.close()


class OpenAIUpstream:
    """One shared, pooled aiohttp session per upstream, created lazily inside the running loop."""

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self._base = config.base_url.rstrip("/")
        self._url = self._base + "/chat/completions"
        headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._headers = CIMultiDict(headers)  # built once: aiohttp would copy a plain dict per request
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.first_byte_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.config.max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, json_serialize=lambda o: orjson.dumps(o).decode()
            )
        return self._session

    async def send(self, model: str, payload: bytes, stream: bool, path: str = "/chat/completions") -> OpenAIResponse:
        session = self._session or self._get_session()
        url = self._url if path == "/chat/completions" else self._base + path
        with _translated(self.name):
            resp = await session.post(url, data=payload, headers=self._headers)
        return OpenAIResponse(resp, self.name)

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
        if self._session is not None:
            await self._session.close()
            self._session = None
