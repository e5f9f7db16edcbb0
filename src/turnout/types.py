"""The vocabulary of turnout, named once: request context, decision, target, attempt, protocols.

No logic lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from turnout.features import Features


@dataclass(slots=True)
class RequestContext:
    """One inbound chat request, parsed and checked, as every stage sees it."""

    request_id: str
    body: dict[str, Any]
    model: str
    stream: bool
    route_hint: str | None = None  # from `metadata.route` or the `x-turnout-route` header
    route_hint_source: str | None = None
    session: str | None = None  # conversation key: `x-turnout-session`, `metadata.session_id` or `user`
    started: float = 0.0  # perf_counter() when the request arrived
    features: Features | None = None  # built by the router on first use
    # Filled in as the request moves through the gateway; read for response headers and records.
    decision: Decision | None = None
    target: Target | None = None
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(slots=True)
class Decision:
    """Which route answers a request, and why."""

    route: str
    strategy: str  # explicit | fallback | passthrough | (next: rules, semantic, classifier, llm)
    router: str | None = None
    confidence: float | None = None
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    margin: float | None = None
    signals: dict[str, Any] = field(default_factory=dict)
    provenance: list[str] = field(default_factory=list)
    strategy_ms: dict[str, float] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)  # what each strategy said, in order
    elapsed_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "router": self.router,
            "route": self.route,
            "strategy": self.strategy,
            "confidence": self.confidence,
            "reason": self.reason,
            "scores": self.scores,
            "threshold": self.threshold,
            "margin": self.margin,
            "signals": self.signals,
            "provenance": self.provenance,
            "strategy_ms": self.strategy_ms,
            "trace": self.trace,
            "elapsed_ms": round(self.elapsed_ms, 4),
        }


@dataclass(frozen=True, slots=True)
class Target:
    """One concrete model a route may send to."""

    key: str  # the name under `models:` in the config
    upstream: str  # the name under `upstreams:`
    name: str  # the model id the upstream knows


@dataclass  # not slots=True: orjson writes a plain dataclass from its __dict__ in ~0.3 us, a slotted one in
# ~1.8 us (measured), and every audit row holds the request's attempts
class Attempt:
    """One try of one target: what went wrong (None when it answered) and how long it took."""

    target: str
    error: str | None
    status: int | None
    elapsed_ms: float
    started_ms: float = 0.0  # offset from the request's arrival (for trace spans)


@dataclass(slots=True)
class StreamCount:
    """Streams being relayed now: kept by the request path (two attribute updates per stream, no call)
    and read by the metrics sink, which shares the gateway's counter (telemetry.Telemetry)."""

    active: int = 0


@dataclass(slots=True)
class RequestRecord:
    """The metadata of one finished request, streams included (written when the stream closes).

    Never text: no prompt, completion, key or token. Sinks (metrics, audit log, usage) read it; it never
    feeds back into routing.
    """

    request_id: str
    started_at: float  # unix seconds
    endpoint: str  # chat | route
    status: int
    error: str | None = None  # bounded: timeout, upstream_4xx, upstream_5xx, connect, rate_limited, ...
    router: str | None = None
    route: str | None = None
    model: str | None = None  # the config's model key that answered (or was last tried)
    upstream: str | None = None
    strategy: str | None = None
    reason: str | None = None
    confidence: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    margin: float | None = None
    provenance: list[str] = field(default_factory=list)
    decision_ms: float | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)  # each strategy's verdict (see Decision.trace)
    attempts: list[Attempt] = field(default_factory=list)
    stream: bool = False
    latency_ms: float = 0.0  # until the last byte went to the client
    ttft_ms: float | None = None  # first content chunk of a stream
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # of prompt_tokens, served from the upstream's prompt cache (reported only)
    tokens_estimated: bool = False
    cost_usd: float | None = None
    cache: str = "off"
    guards: list[dict[str, Any]] = field(default_factory=list)


class Sink(Protocol):
    """Receives every finished request's record. `emit` never blocks and never raises."""

    def emit(self, record: RequestRecord) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Strategy(Protocol):
    """One way of deciding. Returns a Decision, or None to abstain; the router applies policy."""

    name: str

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None: ...


class Encoder(Protocol):
    """Text to unit-length vectors. `id` names the model, for caches."""

    id: str

    async def encode(self, texts: list[str]) -> Any: ...  # numpy array, shape (len(texts), dim)

    async def close(self) -> None: ...


class UpstreamResponse(Protocol):
    """An upstream's answer, headers read, body not yet."""

    status: int
    content_type: str
    retry_after: float | None

    async def read(self) -> bytes: ...

    async def next_chunk(self) -> bytes: ...  # b"" at the end of the body; raises UpstreamError

    def close(self) -> None: ...


class Upstream(Protocol):
    """A provider endpoint. It translates and sends; retries and fallback live in `proxy`."""

    name: str

    async def send(
        self, model: str, payload: bytes, stream: bool, path: str = "/chat/completions"
    ) -> UpstreamResponse: ...

    async def probe(self, timeout_s: float) -> tuple[bool, str, list[str]]: ...

    async def close(self) -> None: ...
