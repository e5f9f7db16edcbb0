"""Sentence encoders behind one interface, with a disk cache for route utterances.

`ENCODER_KINDS` maps the config's `kind` to a builder. Encoders load lazily (the bundled USE takes
about a second) and run CPU work on a thread of their own, so the event loop keeps relaying streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from turnout.config import EncoderConfig
from turnout.encoders.local import SentenceTransformerEncoder, USEEncoder
from turnout.encoders.remote import RemoteEncoder
from turnout.errors import ClassificationFailed, ConfigError
from turnout.types import Encoder, Upstream

log = logging.getLogger("turnout")


def _use(name: str, cfg: EncoderConfig, upstreams: Mapping[str, Upstream]) -> Encoder:
    return USEEncoder(threads=cfg.threads, max_tokens=cfg.max_tokens, runtime=cfg.runtime)


def _st(name: str, cfg: EncoderConfig, upstreams: Mapping[str, Upstream]) -> Encoder:
    return SentenceTransformerEncoder(cfg.path or "", threads=cfg.threads, max_tokens=cfg.max_tokens,
                                      runtime=cfg.runtime)  # fmt: skip


def _remote(name: str, cfg: EncoderConfig, upstreams: Mapping[str, Upstream]) -> Encoder:
    up = upstreams[cfg.upstream or ""]
    return RemoteEncoder(up, cfg.model or "", cfg.timeout_s)


ENCODER_KINDS: dict[str, Callable[[str, EncoderConfig, Mapping[str, Upstream]], Encoder]] = {
    "use": _use,
    "sentence-transformers": _st,
    "openai": _remote,
}


class EncoderSet:
    """The configured encoders, built on first use and shared by every router."""

    def __init__(self, configs: Mapping[str, EncoderConfig], upstreams: Mapping[str, Upstream]) -> None:
        self.configs = configs
        self.upstreams = upstreams
        self._built: dict[str, Encoder] = {}

    def get(self, name: str) -> Encoder:
        enc = self._built.get(name)
        if enc is None:
            cfg = self.configs.get(name)
            if cfg is None:
                raise ConfigError(f"encoder `{name}` is not defined under `encoders`")
            enc = self._built[name] = ENCODER_KINDS[cfg.kind](name, cfg, self.upstreams)
        return enc

    def timeout(self, name: str) -> float:
        return self.configs[name].timeout_s

    def call(self, name: str) -> EncoderCall:
        return EncoderCall(self.get(name), self.timeout(name))

    async def close(self) -> None:
        for enc in self._built.values():
            await enc.close()


class EmbeddingCache:
    """Utterance vectors on disk, one file per encoder, keyed by a hash of the text: fast restarts."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory) / "embeddings"

    def _path(self, encoder_id: str) -> Path:
        return self.directory / (hashlib.sha256(encoder_id.encode()).hexdigest()[:24] + ".npz")

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _load(self, encoder_id: str) -> dict[str, np.ndarray]:
        path = self._path(encoder_id)
        if not path.exists():
            return {}
        try:
            with np.load(path, allow_pickle=False) as data:
                return dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable embedding cache %s", path)
            return {}

    def _save(self, encoder_id: str, table: dict[str, np.ndarray]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self._path(encoder_id)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, keys=np.array(list(table)), vectors=np.stack(list(table.values())))
            os.replace(tmp, path)
        except OSError as exc:  # a read-only disk slows restarts; it must not stop the gateway
            log.warning("cannot write embedding cache in %s: %s", self.directory, exc.strerror)

    async def embed(self, encoder: Encoder, texts: list[str]) -> np.ndarray:
        """Vectors for texts, from the cache where present; new ones are computed in one batch and saved."""
        # The input cap changes the vectors: it is part of the cache key.
        key_id = f"{encoder.id}|max_tokens={getattr(encoder, 'max_tokens', '')}"
        table = self._load(key_id)
        keys = [self._key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in table}.items())
        if missing:
            vectors = await encoder.encode([t for _, t in missing])
            for (k, _), v in zip(missing, vectors, strict=True):
                table[k] = np.asarray(v, dtype=np.float32)
            self._save(key_id, table)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([table[k] for k in keys]).astype(np.float32)


@contextmanager
def failing_open(encoder: str) -> Iterator[None]:
    """Turn any encoder failure into ClassificationFailed: the router records it and fails open."""
    try:
        yield
    except TimeoutError as exc:
        raise ClassificationFailed(f"encoder `{encoder}` timed out", code="encoder_timeout") from exc
    except ClassificationFailed:
        raise
    except Exception as exc:
        raise ClassificationFailed(f"encoder `{encoder}` failed ({type(exc).__name__})", code="encoder_error") from exc


class EncoderCall:
    """One encoder with its timeout, split in two so a request's embedding can start early.

    `start(text)` hands the work over now: an encoder with a thread of its own (`submit`) gets the job
    at once, so whatever the event loop does next (rules, sparse scoring) overlaps it; any other encoder
    runs as a task from the loop's next turn. `finish(future)` waits for it under the timeout."""

    def __init__(self, encoder: Encoder, timeout_s: float) -> None:
        self.encoder = encoder
        self.timeout_s = timeout_s

    def start(self, text: str) -> asyncio.Future[Any]:
        submit = getattr(self.encoder, "submit", None)
        if submit is not None:
            fut: asyncio.Future[Any] = submit([text])
            return fut
        return asyncio.ensure_future(self.encoder.encode([text]))

    async def finish(self, fut: asyncio.Future[Any]) -> np.ndarray:
        async with asyncio.timeout(self.timeout_s):
            vectors = await fut
        return np.asarray(vectors[0], dtype=np.float32)


async def encode_one(encoder: Encoder, text: str, timeout_s: float) -> np.ndarray:
    call = EncoderCall(encoder, timeout_s)
    return await call.finish(call.start(text))
