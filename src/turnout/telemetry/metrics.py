"""The Prometheus sink: counters and histograms in a private registry, served at `GET /metrics`.

Every label value is bounded. Router, route and model labels take only the config's names (plus
`passthrough` for the passthrough route); anything else, such as a passthrough model id, becomes
`other`, and a missing one `none`. Status, error reason, strategy, verdict and decision reason take
values from fixed sets, again with `other` for anything unexpected. No label ever carries client input,
prompt text or a key, so the page cannot grow with traffic. docs/metrics.md lists every series.

Records arrive in batches (`emit_many`, from telemetry.Telemetry.flush), so the sink does per request
only what it must: the labels of a request's counters and histograms (requests, errors, decisions,
strategy verdicts, tokens, cost, cache, latencies) all follow from what kind of request it was, its
*signature* (endpoint, router, route, model, status, error, strategy, the strategies' verdicts, cache
result, tokens estimated, stream). A batch is grouped by signature; each group's labels and reason code
are worked out once, its counters get one addition each and its histogram values are bucketed in one
loop. Values live in plain dicts keyed by tuples of label values and become exposition families only
when scraped (see `CounterFamily`).

Under `turnout serve --workers N` each worker counts for itself and a scrape reaches any one of them, so
the workers of one server share their numbers through snapshot files (see `Siblings`); `emit` is the
same in both modes.

Beside turnout's own series the page has `turnout_build_info` and the standard `process_*` series
(prometheus_client's ProcessCollector, read from /proc when scraped, nothing on the request path). With
several workers those are the server's, not the answering worker's: CPU seconds summed over every worker
that ran (retired ones included, so the counter never steps back), memory and open file descriptors over
the live ones, the start time the oldest live worker's; the per-process fd limit is left out.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from turnout import __version__
from turnout.config import STRATEGY_NAMES, Settings
from turnout.telemetry.siblings import PUBLISH_S, Siblings, Snapshot, Totals, add_snapshot
from turnout.types import Attempt, RequestRecord, StreamCount

if TYPE_CHECKING:
    from turnout.telemetry.audit import BackgroundWriter

log = logging.getLogger("turnout")

OTHER = "other"  # a value outside the bounded set
NONE = "none"  # no value: a request that failed before a decision, a route call that sent nothing
PASSTHROUGH = "passthrough"

# Seconds. Upstream latency, TTFT and whole requests: local models answer in milliseconds, long streams
# take minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)

ENDPOINTS = ("chat", "route")
STATUS_CODES = (200, 400, 401, 403, 404, 405, 408, 409, 413, 422, 429, 499, 500, 502, 503, 504)
ERROR_REASONS = (
    "timeout", "upstream_4xx", "upstream_5xx", "connect", "rate_limited", "guard_block", "parse_error",
    "cancelled", "classification_failed", "auth", "internal",
)  # fmt: skip
# An attempt's error kind (errors.UpstreamError.kind, or proxy's `upstream_4xx`) as an error reason;
# `http_5xx` and `http_4xx` kinds are mapped by their first digit.
ATTEMPT_REASONS = {
    "timeout": "timeout", "connect": "connect", "dropped": "connect", "rate_limited": "rate_limited",
    "upstream_4xx": "upstream_4xx",
}  # fmt: skip
STRATEGIES = (*STRATEGY_NAMES, "fallback", "sticky", PASSTHROUGH)
VERDICTS = ("decided", "below_threshold", "below_margin", "abstained", "failed")
# Why a decision went where it did, from the strategy that made it (never the free-text reason).
DECIDED_BY = {
    "explicit": "hint", "rules": "rule", "semantic": "match", "classifier": "classified", "llm": "judged",
    "sticky": "sticky", PASSTHROUGH: PASSTHROUGH,
}  # fmt: skip
CACHE_RESULTS = ("hit", "semantic_hit", "miss", "bypass")  # `off` (no cache on the route) is not counted
_VERDICT = itemgetter("strategy", "verdict")  # a trace entry's (strategy, verdict), in C

# Process series of a server with several workers (see the module doc): the counter is added up like
# turnout's own counters, retired workers included; these gauges over the live workers only.
CPU_SECONDS = "process_cpu_seconds_total"
SUMMED_GAUGES = ("process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds")
START_TIME = "process_start_time_seconds"  # the oldest live worker's

# A signature: endpoint, router, route, model label, status, error, strategy, ((strategy, verdict), ...),
# cache, tokens estimated, stream.
Signature = tuple[
    str, str | None, str | None, str, int, str | None, str | None, tuple[tuple[str, str], ...], str, bool, bool
]


def _bounded(values: Iterable[str], none: str | None = NONE) -> dict[str | None, str]:
    """A look-up table from an allowed value to its label; `.get(v, OTHER)` bounds anything else."""
    table: dict[str | None, str] = {v: v for v in values}
    if none is not None:
        table[None] = none
    return table


def _status_labels() -> tuple[str, ...]:
    """Label of every HTTP status 0-599: the code itself when it is in STATUS_CODES, else its class."""
    known = set(STATUS_CODES)
    return tuple(str(c) if c in known else (f"{c // 100}xx" if c >= 100 else OTHER) for c in range(600))


STATUS = _status_labels()


def status_label(code: int) -> str:
    return STATUS[code] if 0 <= code < 600 else OTHER


def attempt_reason(kind: str) -> str:
    reason = ATTEMPT_REASONS.get(kind)
    if reason is not None:
        return reason
    if kind.startswith("http_5"):
        return "upstream_5xx"
    if kind.startswith("http_4"):
        return "upstream_4xx"
    return OTHER


# --- families: values in plain dicts, turned into exposition families only when scraped ----------
#
# prometheus_client's own metric children take a lock per update: about 1 us per counter increment and
# 3 us per histogram observation on the 2-core development VM, 18-32 us per request in all. These cost
# 4-7 us. `emit` and `render` both run on the app's event loop, so a dict update needs no lock; the page
# is still written by prometheus_client.


class CounterFamily:
    """A labelled counter: one running total per tuple of label values."""

    __slots__ = ("documentation", "labels", "name", "values")

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def collect(self, values: dict[tuple[str, ...], Any]) -> Metric:
        """The family with `values`: this one's own, or the sum over a server's workers."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in list(values.items()):
            family.add_metric(key, value)
        return family


class HistogramFamily:
    """A labelled histogram: per tuple of label values, a count per bucket (not cumulative) and the sum."""

    __slots__ = ("bounds", "documentation", "labels", "le", "name", "values")

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = buckets
        self.le = [*(repr(float(b)) for b in buckets), "+Inf"]  # as prometheus_client writes `le`
        self.values: dict[tuple[str, ...], list[float]] = {}

    def collect(self, values: dict[tuple[str, ...], Any]) -> Metric:
        """The family with `values`: this one's own, or the sum over a server's workers."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, counts in list(values.items()):
            total, buckets = 0.0, []
            for le, n in zip(self.le, counts, strict=False):  # the last count is the sum
                total += n
                buckets.append((le, total))
            family.add_metric(key, buckets, counts[-1])
        return family


def _observe_many(family: HistogramFamily, key: tuple[str, ...], values: list[float]) -> None:
    """Observations of `values` under `key`, at once."""
    counts = family.values.get(key)
    if counts is None:
        counts = family.values[key] = [0.0] * (len(family.bounds) + 2)
    if not observe(counts, family.bounds, values):
        _observe(counts, family.bounds, values)


def _observe(counts: list[float], bounds: tuple[float, ...], values: list[float]) -> bool:
    """Each value counted in its bucket, and their sum added to the last count (added up in order, as
    the C function does on every Python version: `sum` adds floats more exactly from 3.12 on)."""
    total = 0.0
    for value in values:
        counts[bisect_left(bounds, value)] += 1
        total += value
    counts[-1] += total
    return True


class Columns(NamedTuple):
    """What the records of one group add, gathered in one pass (_columns)."""

    decision: list[float]  # seconds deciding, of the records with a decision time
    latency: list[float]  # seconds until the last byte
    prompt: int  # tokens (None counts 0)
    completion: int
    cached: int
    cost: float  # USD, added up in order
    ttft: list[float]  # seconds, of the streamed records
    tpot: list[float]  # seconds per output token after the first, of the streamed records with output
    answered: dict[str, list[float]]  # target -> seconds, of the requests its first attempt answered
    several: list[list[Attempt]]  # the attempts of every other request with attempts


def _columns(group: list[RequestRecord]) -> Columns:
    """A group's records in one pass: the reference for `columns`, the same function in C."""
    decision: list[float] = []
    latency: list[float] = []
    ttft: list[float] = []
    tpot: list[float] = []
    answered: dict[str, list[float]] = {}
    several: list[list[Attempt]] = []
    prompt = completion = cached = 0
    cost = 0.0
    for r in group:
        if r.decision_ms is not None:
            decision.append(r.decision_ms / 1000)
        latency.append(r.latency_ms / 1000)
        prompt += r.prompt_tokens or 0
        completion += r.completion_tokens or 0
        cached += r.cached_tokens or 0
        cost += r.cost_usd or 0.0
        if r.ttft_ms is not None:
            ttft.append(r.ttft_ms / 1000)
            if r.completion_tokens:
                tpot.append(max((r.latency_ms - r.ttft_ms) / max(r.completion_tokens - 1, 1) / 1000, 0.0))
        attempts = r.attempts
        if len(attempts) == 1 and attempts[0].error is None:
            answered.setdefault(attempts[0].target, []).append(attempts[0].elapsed_ms / 1000)
        elif attempts:
            several.append(attempts)
    return Columns(decision, latency, prompt, completion, cached, cost, ttft, tpot, answered, several)


def _signature(r: RequestRecord, models: dict[str | None, str]) -> Signature:
    """The key a batch's records are grouped by (MetricsSink.emit_many): all that their labels and
    reason code depend on. The model's label is worked out here: keys are fewer that way."""
    trace = r.trace
    return (
        r.endpoint, r.router, r.route, models.get(r.model, OTHER), r.status, r.error, r.strategy,
        tuple(map(_VERDICT, trace)) if trace else (), r.cache, r.tokens_estimated, r.stream,
    )  # fmt: skip


observe: Callable[[list[float], tuple[float, ...], list[float]], bool]
signature: Callable[[RequestRecord, dict[str | None, str]], Signature]
columns: Callable[[list[RequestRecord]], Columns | None]  # None: the C function left the group to Python
try:  # the same functions in C (see _record.c)
    from turnout.telemetry import _record
except ImportError:  # not built (no C compiler at install)
    observe, signature, columns = _observe, _signature, _columns
else:
    _record.prepare_metrics(_signature, _VERDICT, OTHER, Columns)
    observe, signature, columns = _record.observe, _record.signature, _record.columns


class Counts(NamedTuple):
    """What a batch adds: (counter, labels, amount) and (histogram, labels, [values]), worked out before
    any of it is added."""

    adds: list[tuple[CounterFamily, tuple[str, ...], float]]
    observations: list[tuple[HistogramFamily, tuple[str, ...], list[float]]]


class MetricsSink:
    """Prometheus metrics for one app, in a registry of its own: several apps in one process (tests)
    never share series."""

    def __init__(self, settings: Settings) -> None:
        self._routers = _bounded(settings.routers)
        self._routes = _bounded([*settings.routes, PASSTHROUGH])
        self._models = _bounded(settings.models)
        self._endpoints = _bounded(ENDPOINTS)
        self._errors = _bounded(ERROR_REASONS)
        self._strategies = _bounded(STRATEGIES)
        self._verdicts = _bounded(VERDICTS)
        self._cache_results = _bounded(CACHE_RESULTS)

        self.requests = CounterFamily(
            "turnout_requests_total", "Requests answered, by endpoint, router, route, model and HTTP status.",
            ("endpoint", "router", "route", "model", "status"),
        )  # fmt: skip
        self.request_seconds = HistogramFamily(
            "turnout_request_duration_seconds",
            "Chat request latency, arrival to last byte (a stream: the whole stream), by route and stream.",
            ("route", "stream"), LATENCY_BUCKETS,
        )  # fmt: skip
        self.errors = CounterFamily(
            "turnout_errors_total",
            "Requests that ended in an error, by model and reason; plus one classification_failed per strategy "
            "that failed while deciding.",
            ("model", "reason"),
        )  # fmt: skip
        self.decisions = CounterFamily(
            "turnout_routing_decisions_total", "Routing decisions, by router, route, strategy and reason code.",
            ("router", "route", "strategy", "reason"),
        )  # fmt: skip
        self.verdicts = CounterFamily(
            "turnout_strategy_verdicts_total",
            "What each strategy said while a router decided, by router, strategy and verdict.",
            ("router", "strategy", "verdict"),
        )  # fmt: skip
        self.decision_seconds = HistogramFamily(
            "turnout_decision_duration_seconds", "Time to decide a route, by the strategy that decided.",
            ("strategy",), DECISION_BUCKETS,
        )  # fmt: skip
        self.upstream_seconds = HistogramFamily(
            "turnout_upstream_duration_seconds",
            "Upstream attempt latency (JSON: the whole answer; a stream: its first chunk), by model and outcome.",
            ("model", "outcome"), LATENCY_BUCKETS,
        )  # fmt: skip
        self.upstream_errors = CounterFamily(
            "turnout_upstream_errors_total",
            "Failed upstream attempts (retried, fallen back from, or final), by model and reason.",
            ("model", "reason"),
        )  # fmt: skip
        self.ttft = HistogramFamily(
            "turnout_time_to_first_token_seconds", "Streams: request arrival to the first content chunk, by model.",
            ("model",), LATENCY_BUCKETS,
        )  # fmt: skip
        self.tpot = HistogramFamily(
            "turnout_time_per_output_token_seconds",
            "Streams: (latency - time to first token) / (output tokens - 1), by model.",
            ("model",), TPOT_BUCKETS,
        )  # fmt: skip
        self.retries = CounterFamily(
            "turnout_retries_total", "Upstream attempts on the same model beyond its first, by model.", ("model",)
        )
        self.fallbacks = CounterFamily(
            "turnout_fallbacks_total", "Moves to the next model of a route's chain, by route and the model left.",
            ("route", "model"),
        )  # fmt: skip
        self.tokens = CounterFamily(
            "turnout_tokens_total", "Tokens, by model, direction (input, output) and source (reported, estimated).",
            ("model", "direction", "source"),
        )  # fmt: skip
        self.cached_tokens = CounterFamily(
            "turnout_cached_tokens_total",
            "Input tokens the upstream reported serving from its prompt cache (a part of turnout_tokens_total's "
            "input), by model.",
            ("model",),
        )  # fmt: skip
        self.cost = CounterFamily(
            "turnout_cost_total", "Spend at the config's prices, by model and currency.", ("model", "currency")
        )
        self.cache = CounterFamily(
            "turnout_cache_requests_total", "Response cache look-ups, by route and result.", ("route", "result")
        )
        # Set from the writers' own counts when the page or a snapshot is made (`_count_logs`), not per request.
        self.log_rows = CounterFamily(
            "turnout_log_rows_total",
            "Rows of the audit and review logs, by log and outcome (written; dropped: the writer failed or fell "
            "behind).",
            ("log", "outcome"),
        )  # fmt: skip
        self.families: tuple[CounterFamily | HistogramFamily, ...] = (
            self.requests, self.request_seconds, self.errors, self.decisions, self.verdicts, self.decision_seconds,
            self.upstream_seconds, self.upstream_errors, self.ttft, self.tpot, self.retries, self.fallbacks,
            self.tokens, self.cached_tokens, self.cost, self.cache, self.log_rows,
        )  # fmt: skip
        self.logs: list[BackgroundWriter[Any]] = []  # see `watch`
        self.streams = StreamCount()  # the gateway's own counter once telemetry.Telemetry shares it
        self.process = ProcessCollector(registry=None)  # reads /proc when collected; yields nothing elsewhere
        self.siblings: Siblings | None = None  # set by `share`: this is one of several workers
        self._publisher: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def watch(self, writer: BackgroundWriter[Any]) -> None:
        """Count a log writer's rows (written, dropped, queued) on the page: read when it is rendered."""
        self.logs.append(writer)

    def _count_logs(self) -> dict[str, int]:
        """Bring `log_rows` up to the writers' counts (each only grows); returns the rows queued per log."""
        values = self.log_rows.values
        for w in self.logs:
            values[(w.name, "written")] = w.written
            values[(w.name, "dropped")] = w.dropped
        return {w.name: w.queued for w in self.logs}

    def share(self, directory: str) -> None:
        """Make the page the sum over the workers of one server, which all publish to `directory`."""
        self.siblings = Siblings(Path(directory))

    # --- the Sink protocol ---------------------------------------------------------------------

    def emit(self, record: RequestRecord) -> None:
        self.emit_many([record])

    def emit_many(self, records: list[RequestRecord]) -> None:
        """Count a batch (telemetry.Telemetry.flush hands over up to 128 records at once): records are
        grouped by signature, and each group is counted at once, its labels and reason code worked out
        once and its histogram values bucketed in one loop. Every count is worked out before any is
        added, so a batch is counted whole or not at all (a record that cannot be counted raises first)."""
        if not records:
            return
        keys = list(map(signature, records, repeat(self._models)))
        first = keys[0]
        groups: dict[Signature, list[RequestRecord]]
        if keys.count(first) == len(keys):  # the usual batch: one signature, grouped without bytecode per record
            groups = {first: records}
        else:
            groups = {}
            for key, r in zip(keys, records, strict=True):
                group = groups.get(key)
                if group is None:
                    groups[key] = [r]
                else:
                    group.append(r)
        out = Counts([], [])
        for key, group in groups.items():
            self._count(key, group, out)
        for counter, labels, amount in out.adds:
            counter.inc(labels, amount)
        for histogram, labels, values in out.observations:
            _observe_many(histogram, labels, values)

    def stream_opened(self) -> None:
        self.streams.active += 1

    def stream_closed(self) -> None:
        self.streams.active -= 1

    def render(self) -> tuple[bytes, str]:
        """The exposition page and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def collect(self) -> Iterator[Metric]:
        """The registry's view of this sink (prometheus_client's `Collector` protocol): this process's
        numbers, or with siblings, the whole server's."""
        if self.siblings is None:
            queued = self._count_logs()
            for family in self.families:
                yield family.collect(family.values)
            streams = self.streams.active
            yield from self.process.collect()
        else:
            totals, streams, process, queued = self._whole_server(self.siblings)
            for family in self.families:
                yield family.collect(totals.get(family.name, {}))
            yield from self._server_process(totals.get(CPU_SECONDS, {}).get(()), process)
        yield GaugeMetricFamily("turnout_active_streams", "Streams being relayed now.", value=streams)
        waiting = GaugeMetricFamily(
            "turnout_log_queue_rows", "Rows waiting for the audit or review log's writer, by log.", labels=("log",)
        )
        for name, rows in queued.items():
            waiting.add_metric((name,), rows)
        yield waiting
        info = GaugeMetricFamily(
            "turnout_build_info", "The running turnout's version; always 1 (join on it to select turnout's targets).",
            labels=("version",),
        )  # fmt: skip
        info.add_metric((__version__,), 1)
        yield info

    def _server_process(self, cpu: float | None, process: dict[str, float]) -> Iterator[Metric]:
        """The process families of a server with several workers: this worker's families (names, help
        texts, types) with the server's values; a series no snapshot had is left out."""
        for family in self.process.collect():
            name = family.samples[0].name
            value = cpu if name == CPU_SECONDS else process.get(name)
            if value is not None:
                kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
                yield kind(family.name, family.documentation, value=value)

    async def start(self) -> None:
        if self.siblings is not None:
            self.siblings.join()
            self.siblings.publish(orjson.dumps(self._snapshot()))
            self._publisher = asyncio.create_task(self._publish(self.siblings))

    async def close(self) -> None:
        if self.siblings is not None and self._publisher is not None:
            self._publisher.cancel()  # it is asleep: nothing of it runs before it sees the cancellation
            self._publisher = None
            self.siblings.leave(self._snapshot())

    # --- several workers -------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        queued = self._count_logs()
        families: dict[str, Any] = {f.name: list(f.values.items()) for f in self.families}
        process: dict[str, float] = {}
        for family in self.process.collect():
            for sample in family.samples:
                if sample.name == CPU_SECONDS:
                    families[CPU_SECONDS] = [((), sample.value)]  # retired with the counters
                elif sample.name in SUMMED_GAUGES or sample.name == START_TIME:
                    process[sample.name] = sample.value
        return {"streams": self.streams.active, "queued": queued, "process": process, "families": families}

    def _whole_server(self, siblings: Siblings) -> tuple[Totals, int, dict[str, float], dict[str, int]]:
        """This worker's numbers plus every sibling's snapshot and the retired workers' totals; the active
        streams, process gauges and queued log rows of the live workers. This worker's snapshot is rewritten
        first: a later scrape answered by a sibling then sees at least what this one reported, so no total
        steps back between scrapes."""
        own = self._snapshot()
        siblings.publish(orjson.dumps(own))
        totals: Totals = {}
        streams = 0
        process: dict[str, float] = {}
        queued: dict[str, int] = {}
        for snapshot in (own, *siblings.gather()):
            add_snapshot(totals, snapshot)
            streams += snapshot.get("streams", 0)
            for name, rows in snapshot.get("queued", {}).items():
                queued[name] = queued.get(name, 0) + rows
            for name, value in snapshot.get("process", {}).items():
                have = process.get(name)
                if have is None:
                    process[name] = value
                else:
                    process[name] = min(have, value) if name == START_TIME else have + value
        return totals, streams, process, queued

    async def _publish(self, siblings: Siblings) -> None:
        """Rewrite this worker's snapshot every PUBLISH_S seconds, so that a page another worker renders
        is at most that far behind on this one's numbers. A failure is logged once until a write works."""
        failing = False
        while True:
            await asyncio.sleep(PUBLISH_S)
            try:
                siblings.publish(orjson.dumps(self._snapshot()))
            except OSError:
                if not failing:
                    log.warning("metrics: writing this worker's snapshot to %s failed", siblings.path, exc_info=True)
                failing = True
            else:
                failing = False

    # --- parts of a record ---------------------------------------------------------------------

    def _count(self, key: Signature, group: list[RequestRecord], out: Counts) -> None:
        """Append to `out` what the records of one signature add: (counter, labels, amount) and (histogram,
        labels, [values]). Labels are bounded here, and the decision's reason code is worked out once."""
        endpoint, router_raw, route_raw, model, code, error, strategy_raw, trace, cache, estimated, stream = key
        n = len(group)
        c = columns(group) or _columns(group)
        strategies, verdicts = self._strategies, self._verdicts
        router = self._routers.get(router_raw, OTHER)
        route = self._routes.get(route_raw, OTHER)
        out.adds.append(
            (self.requests, (self._endpoints.get(endpoint, OTHER), router, route, model, status_label(code)), n)
        )
        if error is not None:
            out.adds.append((self.errors, (model, self._errors.get(error, OTHER)), n))
        if strategy_raw is not None:
            strategy = strategies.get(strategy_raw, OTHER)
            failed = low = 0
            for name, said in trace:
                verdict = verdicts.get(said, OTHER)
                out.adds.append((self.verdicts, (router, strategies.get(name, OTHER), verdict), n))
                if verdict == "failed":
                    failed += 1
                elif verdict == "below_threshold" or verdict == "below_margin":
                    low += 1
            if strategy == "fallback":
                reason = "failed" if failed else "low_confidence" if low else "abstained"
            elif strategy == "explicit":
                reason = "hint" if router_raw is not None else "model"
            else:
                reason = DECIDED_BY.get(strategy, OTHER)
            out.adds.append((self.decisions, (router, route, strategy, reason), n))
            if failed:
                out.adds.append((self.errors, (model, "classification_failed"), failed * n))
            if c.decision:
                out.observations.append((self.decision_seconds, (strategy,), c.decision))
        if cache != "off":
            out.adds.append((self.cache, (route, self._cache_results.get(cache, OTHER)), n))
        if endpoint == "chat":
            out.observations.append((self.request_seconds, (route, "true" if stream else "false"), c.latency))
            if code == 200:
                self._usage(c, model, "estimated" if estimated else "reported", error is None, out)
        if c.answered or c.several:
            self._attempts(c, route, out)

    def _usage(self, c: Columns, model: str, source: str, clean: bool, out: Counts) -> None:
        """Tokens, cost, TTFT and TPOT of answered chat requests of one signature."""
        if c.prompt:
            out.adds.append((self.tokens, (model, "input", source), c.prompt))
        if c.completion:
            out.adds.append((self.tokens, (model, "output", source), c.completion))
        if c.cached:
            out.adds.append((self.cached_tokens, (model,), c.cached))
        if c.cost:
            out.adds.append((self.cost, (model, "USD"), c.cost))
        if c.ttft:
            out.observations.append((self.ttft, (model,), c.ttft))
            if clean and c.tpot:
                out.observations.append((self.tpot, (model,), c.tpot))

    def _attempts(self, c: Columns, route: str, out: Counts) -> None:
        """Latency and errors per upstream attempt; a repeat of the same target is a retry, a new one a
        fallback. Latencies are gathered per (target, outcome) first, so each histogram is looked up once;
        a request answered by its first attempt, the usual case, only adds its latency (`c.answered`)."""
        seconds: dict[tuple[str, bool], list[float]] = {
            (target, False): values for target, values in c.answered.items()
        }
        for attempts in c.several:
            self._several(attempts, route, seconds, out)
        models = self._models
        for (target, failed), values in seconds.items():
            out.observations.append(
                (self.upstream_seconds, (models.get(target, OTHER), "error" if failed else "ok"), values)
            )

    def _several(
        self, attempts: list[Attempt], route: str, seconds: dict[tuple[str, bool], list[float]], out: Counts
    ) -> None:
        """A request's attempts in general: failures, retries and fallbacks."""
        models = self._models
        previous: str | None = None
        left = OTHER
        for attempt in attempts:
            model = models.get(attempt.target, OTHER)
            error = attempt.error
            seconds.setdefault((attempt.target, error is not None), []).append(attempt.elapsed_ms / 1000)
            if error is not None:
                out.adds.append((self.upstream_errors, (model, attempt_reason(error)), 1))
            if previous is not None:
                if attempt.target == previous:
                    out.adds.append((self.retries, (left,), 1))
                else:
                    out.adds.append((self.fallbacks, (route, left), 1))
            previous, left = attempt.target, model
