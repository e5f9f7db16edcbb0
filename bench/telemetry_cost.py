#!/usr/bin/env python3
"""CPU that telemetry adds per request, measured part by part in one process (prints numbers; not a test).

    .venv/bin/python bench/telemetry_cost.py [--n 20000] [--reps 5] [--core-ms 0.25]

`bench/gatebench.py --telemetry-overhead` measures the same thing end to end (turnout against
turnout-bare, telemetry off), but on a shared 2-core VM its per-run noise (steal time, neighbours) is
larger than the effect. This measures the parts directly, on the real sinks, with thread CPU clocks:

  record build        the gateway's record builder (telemetry.record.record_builder: the C one where it was
                      built), from what the request path queued, on the event loop
  metrics emit        MetricsSink.emit_many, in batches of 128 as telemetry.Telemetry.flush hands them over,
                      on the event loop
  audit emit          AuditSink.emit_many (the rows and one queue hand-over), on the event loop
  audit writer        the writer thread's own CPU per row (multi-row INSERTs, WAL), while the loop emits
  audit retention     what the rows cost again once they expire: AuditSink.purge dropping their day, per row
                      (the records are dated 40 days back, so their day has expired; the default
                      retention, 30 days). With retention every row is paid for this way, later
  usage (JSON)        telemetry.meter.usage_of on gatebench's JSON answer: the gateway reads usage only for
                      records, so with telemetry off it is not done
  stream meter        StreamMeter on gatebench's 16-chunk stream, usage read at the end (SSE only; apart)

and prints the JSON parts' sum against `--core-ms`, the gateway's CPU per request with telemetry off
(take it from a gatebench run: turnout-bare, json@lite). Medians over `--reps` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time

from turnout.app import tune_gc
from turnout.config import default_config_tree, validate
from turnout.telemetry.audit import AuditSink, audit_path, connect
from turnout.telemetry.meter import StreamMeter, usage_of
from turnout.telemetry.metrics import MetricsSink
from turnout.telemetry.record import record_builder
from turnout.types import Attempt, Decision, RequestContext, RequestRecord, Target


def record(i: int) -> RequestRecord:
    """A routed chat request as the gateway records it: a semantic decision with its trace, one attempt."""
    return RequestRecord(
        f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}", time.time(), "chat", 200, router="auto",
        route="lite", model="lite", upstream="default", strategy="semantic",
        reason="closest example utterances belong to `lite`", confidence=0.41, scores={"lite": 0.41, "deep": 0.22},
        threshold=0.18, margin=0.1, provenance=["lite:12", "lite:40", "lite:7"], decision_ms=2.9,
        trace=[{"strategy": "explicit", "verdict": "abstained"}, {"strategy": "rules", "verdict": "abstained"},
               {"strategy": "semantic", "verdict": "decided", "route": "lite", "confidence": 0.41,
                "scores": {"lite": 0.41, "deep": 0.22}}],
        attempts=[Attempt("lite", None, 200, 0.4, 3.1)], latency_ms=3.6, prompt_tokens=12 + i % 50,
        completion_tokens=40, cost_usd=None,
    )  # fmt: skip


def inputs(i: int) -> tuple[object, ...]:
    """What the request path queues for the same request (build_record's arguments after `models`)."""
    ctx = RequestContext(f"req{i}", {"model": "auto", "messages": []}, "auto", False)
    ctx.decision = Decision(
        "lite", "semantic", router="auto", confidence=0.41, reason="closest example utterances belong to `lite`",
        scores={"lite": 0.41, "deep": 0.22}, threshold=0.18, margin=0.1, provenance=["lite:12", "lite:40", "lite:7"],
        trace=[{"strategy": "explicit", "verdict": "abstained"}, {"strategy": "rules", "verdict": "abstained"},
               {"strategy": "semantic", "verdict": "decided", "route": "lite", "confidence": 0.41}],
        elapsed_ms=2.9,
    )  # fmt: skip
    ctx.target = Target("lite", "default", "m")
    ctx.attempts = [Attempt("lite", None, 200, 0.4, 3.1)]
    return (ctx.request_id, time.time(), "chat", 200, 3.6, ctx, None, (12 + i % 50, 40, 0), None, 0)


# gatebench's fake upstream's answers (fake_upstream.py), byte for byte in shape
JSON_ANSWER = (
    b'{"id":"chatcmpl-fake","object":"chat.completion","created":1700000000,"model":"lite","choices":[{"index":0,'
    b'"finish_reason":"stop","message":{"role":"assistant","content":"Hello from the fake upstream."}}],'
    b'"usage":{"prompt_tokens":8,"completion_tokens":7,"total_tokens":15}}'
)
CHUNK = (
    b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":"lite",'
    b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
)


def thread_cpu(ident: int | None) -> float:
    assert ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


async def one_run(n: int, runtime_dir: str) -> dict[str, float]:
    tree = default_config_tree({})
    tree["runtime_dir"] = runtime_dir
    settings = validate(tree, {})
    metrics, audit = MetricsSink(settings), AuditSink(settings)
    await audit.start()
    records = [record(i) for i in range(n)]
    queued = [inputs(i) for i in range(n)]
    tune_gc()  # as the gateway does after start-up (app.tune_gc)
    out: dict[str, float] = {}

    build = record_builder(settings.models)
    t = time.thread_time()
    for q in queued:
        build(*q)
    out["record build"] = (time.thread_time() - t) / n * 1e6

    t = time.thread_time()
    for i in range(0, n, 128):
        metrics.emit_many(records[i : i + 128])
    out["metrics emit"] = (time.thread_time() - t) / n * 1e6

    t = time.thread_time()
    for _ in range(n):
        usage_of(JSON_ANSWER)
    out["usage (JSON)"] = (time.thread_time() - t) / n * 1e6

    t = time.thread_time()
    for _ in range(n // 16):
        meter = StreamMeter(t)
        for _ in range(16):
            meter.see(CHUNK)
        meter.usage()
    out["stream meter"] = (time.thread_time() - t) / (n // 16) * 1e6

    writer = audit._thread.ident if audit._thread is not None else None
    w0, t, spent = thread_cpu(writer), time.thread_time(), 0.0
    expiring = [dataclasses.replace(r, started_at=r.started_at - 40 * 86400) for r in records]
    for i in range(0, n, 32):  # 32 requests per loop turn, as under load; the writer runs beside the loop
        c = time.thread_time()
        audit.emit_many(expiring[i : i + 32])
        spent += time.thread_time() - c
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.6)  # one flush interval: the writer catches up
    w1, written = thread_cpu(writer), audit.written
    await audit.close()
    out["audit emit"] = spent / n * 1e6
    out["audit writer"] = (w1 - w0) / max(written, 1) * 1e6
    conn = connect(audit_path(settings))
    conn.execute(f"PRAGMA secure_delete = {audit.secure_delete}")  # the writer's connection settings
    audit.opened(conn)
    t = time.thread_time()
    audit.purge(conn)
    out["audit retention"] = (time.thread_time() - t) / max(written, 1) * 1e6
    left = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    conn.close()
    assert left == 0, f"{left} expired rows left after the purge"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="records per run")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--core-ms", type=float, default=0.25, help="gateway CPU ms per request, telemetry off")
    a = ap.parse_args()
    runs = []
    for _ in range(a.reps):
        with tempfile.TemporaryDirectory() as d:
            runs.append(asyncio.run(one_run(a.n, d)))
    parts = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    total = sum(v for k, v in parts.items() if k != "stream meter")
    print(f"{'part':<16} {'us/request':>11}   (medians of {a.reps} runs of {a.n} records)")
    for k, v in parts.items():
        if k != "stream meter":
            print(f"{k:<16} {v:>11.2f}")
    share = total / 10 / a.core_ms
    print(f"{'total (JSON)':<16} {total:>11.2f}   = {share:.1f} % of a {a.core_ms} ms request (target <= 10 %)")
    print(f"{'stream meter':<16} {parts['stream meter']:>11.2f}   per 16-chunk stream, SSE only (instead of usage)")


if __name__ == "__main__":
    main()
