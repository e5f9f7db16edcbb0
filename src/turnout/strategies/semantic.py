"""Semantic routing: example utterances per route, hybrid dense + sparse scoring, top-k per route.

score(utterance) = w * cosine(embedding) + (1 - w) * cosine(TF-IDF over character n-grams)
score(route)     = mean of its top-k utterance scores
The strategy proposes the best route with its score; the router applies threshold and margin.
Provenance names matched utterances by id (`route#index`), never by text.
"""

from __future__ import annotations

import numpy as np

from turnout.banks import bank
from turnout.config import RouterConfig, Settings
from turnout.encoders import EmbeddingCache, EncoderSet, encode_one, failing_open
from turnout.sparse import SparseIndex
from turnout.types import Decision, RequestContext


def route_utterances(settings: Settings, route: str) -> list[str]:
    cfg = settings.routes[route]
    texts = list(cfg.utterances)
    for i, name in enumerate(cfg.banks):
        texts += bank("utterances", name, f"routes.{route}.banks[{i}]")
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


class SemanticStrategy:
    name = "semantic"

    def __init__(self, router: str, config: RouterConfig, settings: Settings, encoders: EncoderSet,
                 cache: EmbeddingCache) -> None:  # fmt: skip
        self.router = router
        self.cfg = config.semantic
        self.encoders = encoders
        self.cache = cache
        self.ids: list[str] = []
        self.owner: list[str] = []
        texts: list[str] = []
        for route in config.routes:
            for i, text in enumerate(route_utterances(settings, route)):
                self.ids.append(f"{route}#{i}")
                self.owner.append(route)
                texts.append(text)
        self._texts = texts
        self.routes = [r for r in config.routes if r in set(self.owner)]
        self.members = {r: np.array([i for i, o in enumerate(self.owner) if o == r]) for r in self.routes}
        self.sparse = SparseIndex(texts)
        self.vectors: np.ndarray | None = None

    @property
    def counts(self) -> dict[str, int]:
        return {r: len(m) for r, m in self.members.items()}

    async def start(self) -> None:
        """Embed the utterances (from the disk cache when it has them)."""
        encoder = self.encoders.get(self.cfg.encoder)
        self.vectors = await self.cache.embed(encoder, self._texts)
        await encoder.encode(["warm up"])  # load the model now, not inside the first request's timeout

    def scores(self, dense: np.ndarray, text: str) -> tuple[dict[str, float], dict[str, list[int]]]:
        w = self.cfg.dense_weight
        combined = w * dense + (1 - w) * self.sparse.scores(text) if w < 1 else dense
        k = self.cfg.top_k
        scores: dict[str, float] = {}
        best: dict[str, list[int]] = {}
        for route, idx in self.members.items():
            sims = combined[idx]
            top = np.argsort(-sims)[:k]
            scores[route] = round(float(sims[top].mean()), 4)
            best[route] = [int(idx[i]) for i in top]
        return scores, best

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None:
        features = ctx.features
        if features is None or not self.routes or not features.text.strip():
            return None
        encoder = self.encoders.get(self.cfg.encoder)
        timeout = self.encoders.timeout(self.cfg.encoder)
        with failing_open(self.cfg.encoder):
            if self.vectors is None:  # not embedded at start-up (the encoder was down then): try now
                await self.start()
            query = await features.embedding(self.cfg.encoder, lambda t: encode_one(encoder, t, timeout))
        assert self.vectors is not None
        scores, best = self.scores(self.vectors @ query, features.text)
        ranked = sorted(scores, key=lambda r: -scores[r])
        top = ranked[0]
        return Decision(
            route=top,
            strategy=self.name,
            confidence=scores[top],
            reason=f"closest example utterances belong to `{top}`",
            scores=scores,
            provenance=[self.ids[i] for i in best[top]],
        )
