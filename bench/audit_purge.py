#!/usr/bin/env python3
"""Retention at scale: what deleting expired audit rows costs the writer (prints numbers; not a test).

    .venv/bin/python bench/audit_purge.py [--expired 1000000] [--rate 500] [--layout days|legacy]

Builds an audit store with `--expired` rows older than the retention (gatebench-sized rows, ~570 bytes),
spread over ten days, and the last hour's rows: in a table per day, as turnout writes them since
0007_a_table_per_day, or with `--layout legacy` in the one table of a store written before. Then starts
the real AuditSink on it, as `turnout serve` does, while records arrive at `--rate` per second, and
prints: how long `start()` took (the gateway is not ready before it returns), how long until every
expired row was gone, the writer thread's CPU for it, the largest the write-ahead log grew, and the
longest a new record waited to be written (the writer drains its queue between purge chunks).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import orjson

from turnout.config import default_config_tree, validate
from turnout.telemetry.audit import (
    DAY_S,
    LEGACY,
    MIGRATIONS,
    AuditSink,
    audit_row,
    connect,
    day_table,
    insert_many,
    insert_rows,
    make_day_table,
    migrate,
    remake_view,
)
from turnout.types import Attempt, RequestRecord


def record(i: int, ts: float) -> RequestRecord:
    return RequestRecord(
        f"{int(ts * 1000):012x}{i:020x}", ts, "chat", 200, router="auto", route="lite", model="lite",
        upstream="default", strategy="semantic", reason="closest example utterances belong to `lite`", confidence=0.41,
        scores={"lite": 0.41, "deep": 0.22}, threshold=0.18, margin=0.1, provenance=["lite:12", "lite:40"],
        decision_ms=2.9, trace=[{"strategy": "explicit", "verdict": "abstained"}],
        attempts=[Attempt("lite", None, 200, 0.4, 3.1)], latency_ms=3.6, prompt_tokens=12, completion_tokens=40,
    )  # fmt: skip


def build_store(path: Path, expired: int, layout: str) -> None:
    """`expired` rows over the 10 days from 40 days ago, and the last hour's rows at one a second: in a
    table per day (`days`), or all in the one table of a store written before 0007 (`legacy`)."""
    conn = connect(path)
    migrate(conn, MIGRATIONS)
    row = audit_row(record(0, 0.0))
    doc = orjson.dumps(row[1:]).decode()
    first = (int(time.time() // DAY_S) - 40) * DAY_S
    step = 10 * DAY_S / max(expired, 1)
    times = [first + i * step for i in range(expired)] + [time.time() - 3600 + i for i in range(3600)]
    for start in range(0, len(times), 10_000):
        chunk = times[start : start + 10_000]
        if layout == "legacy":
            insert_many(conn, LEGACY, ("ts", "doc"), [(ts, doc) for ts in chunk])
            continue
        conn.execute("BEGIN IMMEDIATE")
        for day in sorted({int(ts // DAY_S) for ts in chunk}):
            make_day_table(conn, day)
            insert_rows(conn, day_table(day), ("ts", "doc"), [(ts, doc) for ts in chunk if int(ts // DAY_S) == day])
        conn.execute("COMMIT")
    if layout == "days":
        conn.execute(f"DROP TABLE {LEGACY}")
        remake_view(conn)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def thread_cpu(ident: int | None) -> float:
    assert ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


def wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def expired_left(conn: sqlite3.Connection, cutoff: float) -> bool:
    return conn.execute("SELECT 1 FROM requests WHERE ts < ? LIMIT 1", (cutoff,)).fetchone() is not None


async def run(path: Path, rate: float, runtime: str) -> None:
    tree = default_config_tree({})
    tree["runtime_dir"] = runtime
    tree["telemetry"] = {"audit": {"sqlite_path": str(path), "retention_days": 30}}
    settings = validate(tree, {})
    sink = AuditSink(settings)
    cutoff = time.time() - 30 * 86400
    t0 = time.perf_counter()
    await sink.start()
    ready = time.perf_counter() - t0
    writer = sink._thread.ident if sink._thread else None
    cpu0 = thread_cpu(writer)
    reader = connect(path)
    worst_wait, biggest_wal, done_at = 0.0, 0, None
    i = 0
    while done_at is None or time.perf_counter() - t0 < done_at + 2:
        now = time.time()
        sink.emit(record(i, now))
        i += 1
        sent_at = time.perf_counter()
        await asyncio.sleep(1 / rate)
        if i % max(int(rate // 10), 1) == 0:  # ten times a second: how far behind is the writer?
            biggest_wal = max(biggest_wal, wal_size(path))
            lag = i - sink.written
            worst_wait = max(worst_wait, lag / rate)
            if done_at is None and not expired_left(reader, cutoff):
                done_at = sent_at - t0
        if time.perf_counter() - t0 > 300:
            break
    cpu = thread_cpu(writer) - cpu0
    await sink.close()
    reader.close()
    print(f"start() returned after   {ready:8.2f} s")
    print(f"expired rows gone after  {done_at if done_at is not None else float('nan'):8.2f} s")
    print(f"writer thread CPU        {cpu:8.2f} s (purge and {i} new rows)")
    print(f"largest write-ahead log  {biggest_wal / 1e6:8.1f} MB")
    print(f"longest writer backlog   {worst_wait * 1000:8.0f} ms of records")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expired", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=500.0, help="records per second while the purge runs")
    ap.add_argument(
        "--layout",
        choices=("days", "legacy"),
        default="days",
        help="expired rows in a table per day (0007 on), or in the one table from before 0007",
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "audit.sqlite3"
        t = time.perf_counter()
        build_store(path, a.expired, a.layout)
        size = path.stat().st_size / 1e6
        print(f"store ({a.layout}): {a.expired} expired rows, {size:.0f} MB, built in {time.perf_counter() - t:.1f} s")
        asyncio.run(run(path, a.rate, d))


if __name__ == "__main__":
    main()
