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
from turnout.encoders import EmbeddingCache, EncoderSet, failing_open
from turnout.numbers import round4
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

    def prefetch(self, ctx: RequestContext) -> None:
        if ctx.features is not None and self.routes and self.vectors is not None:
            ctx.features.prefetch(self.cfg.encoder, self.encoders.call(self.cfg.encoder))

    def scores(
        self, dense: np.ndarray, text: str, sparse: np.ndarray | None = None
    ) -> tuple[dict[str, float], dict[str, list[int]]]:
        w = self.cfg.dense_weight
        if w < 1 and sparse is None:
            sparse = self.sparse.scores(text)
        combined = w * dense + (1 - w) * sparse if sparse is not None else dense
        k = self.cfg.top_k
        scores: dict[str, float] = {}
        best: dict[str, list[int]] = {}
        for route, idx in self.members.items():
            sims = combined[idx]
            top = np.argsort(-sims)[:k]
            scores[route] = round4(float(sims[top].mean()))
            best[route] = [int(idx[i]) for i in top]
        return scores, best

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None:
        features = ctx.features
        if features is None or not self.routes or not features.text.strip():
            return None
        name = self.cfg.encoder
        with failing_open(name):
            if self.vectors is None:  # not embedded at start-up (the encoder was down then): try now
                await self.start()
            call = self.encoders.call(name)
            features.prefetch(name, call)  # (if the router has not already) the encoder starts now...
            sparse = self.sparse.scores(features.text) if self.cfg.dense_weight < 1 else None  # ...beside this
            query = await features.embedding(name, call)
        assert self.vectors is not None
        scores, best = self.scores(self.vectors @ query, features.text, sparse)
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
