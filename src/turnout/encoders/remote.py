"""An OpenAI-compatible `/v1/embeddings` endpoint as an encoder (as IntentMux's embedding upstream)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson

from turnout.encoders.local import _normalise
from turnout.errors import UpstreamError
from turnout.types import Upstream


class RemoteEncoder:
    def __init__(self, upstream: Upstream, model: str, timeout_s: float) -> None:
        self.upstream = upstream
        self.model = model
        self.timeout_s = timeout_s
        self.id = f"openai:{upstream.name}:{model}"

    async def encode(self, texts: list[str]) -> np.ndarray:
        payload = orjson.dumps({"model": self.model, "input": texts})
        async with asyncio.timeout(self.timeout_s):
            resp = await self.upstream.send(self.model, payload, False, path="/embeddings")
            body = await resp.read()
        if resp.status != 200:
            raise UpstreamError(f"embeddings from upstream `{self.upstream.name}` failed (HTTP {resp.status})")
        try:
            data: Any = orjson.loads(body)
            rows = sorted(data["data"], key=lambda r: r.get("index", 0))
            return _normalise([r["embedding"] for r in rows])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UpstreamError(f"embeddings from upstream `{self.upstream.name}` were not readable") from exc

    async def close(self) -> None:
        return None
