"""The audit log and the prompt review log: real traffic through a gateway, then the SQLite and JSONL files."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.conftest import UPSTREAM_KEY, GatewayFactory, UpstreamThread, base_config, free_port, sdk
from turnout.config import validate
from turnout.telemetry.audit import (
    BATCH,
    DOC_FIELDS,
    MIGRATIONS,
    WAL_LIMIT_BYTES,
    AuditSink,
    connect,
    day_table,
    immediate,
    make_day_table,
    migrate,
    remake_view,
)
from turnout.telemetry.review import PromptReviewLog
from turnout.types import RequestRecord

SECRET = "the-launch-code-is-0000"
HI = [{"role": "user", "content": SECRET}]
PRICED = {
    "lite-model": {"upstream": "fake", "name": "fake-lite", "input_price": 1.0, "output_price": 2.0},
    "deep-model": {"upstream": "fake", "name": "fake-deep", "input_price": 10.0, "output_price": 20.0},
}
IMAGE = "data:image/png;base64," + "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk" * 4


def rows(path: Path, table: str = "requests") -> list[dict[str, Any]]:
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]


def test_each_request_is_one_row_of_metadata_in_columns(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = make_gateway(runtime_dir=str(tmp_path), models=PRICED)
    with sdk(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=HI)
        client.chat.completions.create(model="auto", messages=HI, extra_body={"metadata": {"route": "deep"}})
    httpx.post(gw.url + "/v1/chat/completions", json={"model": "nope", "messages": HI})
    gw.stop()
    first, second, third = rows(tmp_path / "audit.sqlite3")
    assert first["request_id"] == raw.headers["x-turnout-request-id"]
    assert (first["endpoint"], first["status"], first["router"], first["route"], first["model"]) == (
        "chat", 200, "auto", "lite", "lite-model"
    )  # fmt: skip
    assert (first["strategy"], first["reason"], first["upstream"]) == ("fallback", "every strategy abstained", "fake")
    assert (first["prompt_tokens"], first["completion_tokens"], first["tokens_estimated"]) == (8, 7, 0)
    assert first["cost_usd"] == pytest.approx((8 * 1.0 + 7 * 2.0) / 1e6)
    assert first["latency_ms"] > 0 and first["decision_ms"] is not None and first["stream"] == 0
    assert first["day"] == time.strftime("%Y-%m-%d", time.gmtime(first["ts"]))
    [attempt] = orjson.loads(first["attempts"])
    assert (attempt["target"], attempt["error"], attempt["status"]) == ("lite-model", None, 200)
    assert orjson.loads(first["trace"]) == [{"strategy": "explicit", "verdict": "abstained"}]
    assert (second["route"], second["strategy"], second["confidence"]) == ("deep", "explicit", 1.0)
    assert "metadata.route" in second["reason"]
    assert (third["status"], third["error"], third["route"]) == (404, "parse_error", None)


def test_migrations_are_named_recorded_and_applied_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    with closing(connect(path)) as conn:  # a store written by a version that knew only the first migration
        assert migrate(conn, MIGRATIONS[:1]) == ["0001_requests"]
    settings = validate({**base_config("http://127.0.0.1:9/v1"), "runtime_dir": str(tmp_path)}, {})
    sink = AuditSink(settings)

    async def start_and_stop() -> None:
        await sink.start()
        await sink.close()

    asyncio.run(start_and_stop())
    conn = connect(path)
    names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert names == ["0001_requests", "0002_index_time_route", "0003_only_the_time_index", "0004_rows_as_documents",
                     "0005_rows_in_batches", "0006_one_row_per_request_again", "0007_a_table_per_day",
                     "0008_cached_tokens"]  # fmt: skip
    # no row yet: no day's table, and the empty pre-0007 table went at the first purge
    assert {i for i in indexes if not i.startswith("sqlite_")} == set()
    assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'request%'").fetchall() == []
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (0,)  # the view reads as empty
    assert migrate(conn, MIGRATIONS) == []
    conn.close()


def test_rows_written_before_0004_read_the_same_through_the_view(tmp_path: Path) -> None:
    """0004 stores each row as (ts, one JSON document) and keeps `requests` as a view with every column:
    a row written in columns before it reads back with the same values and types after it."""
    path = tmp_path / "audit.sqlite3"
    values: dict[str, Any] = {
        "ts": 1700000000.25, "day": "2023-11-14", "request_id": "r1", "endpoint": "chat", "status": 502,
        "error": "upstream_5xx", "router": "auto", "route": "deep", "model": "deep-model", "upstream": "fake",
        "strategy": "semantic", "reason": "closest example utterances belong to `deep`", "confidence": 0.41,
        "threshold": 0.18, "margin": 0.1, "scores": '{"lite":0.2,"deep":0.41}', "provenance": '["deep#4"]',
        "trace": '[{"strategy":"rules","verdict":"abstained"}]', "decision_ms": 2.5,
        "attempts": '[{"target":"deep-model","error":"http_500","status":500}]', "stream": 1, "latency_ms": 12.5,
        "ttft_ms": None, "prompt_tokens": 8, "completion_tokens": None, "tokens_estimated": 0, "cost_usd": None,
        "cache": "off", "guards": "[]",
    }  # fmt: skip
    with closing(connect(path)) as conn:
        migrate(conn, MIGRATIONS[:3])
        conn.execute(f"INSERT INTO requests ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                     list(values.values()))  # fmt: skip
        assert migrate(conn, MIGRATIONS) == [
            "0004_rows_as_documents", "0005_rows_in_batches", "0006_one_row_per_request_again", "0007_a_table_per_day",
            "0008_cached_tokens",
        ]  # fmt: skip
    [row] = rows(path)
    assert row == {"id": 1 << 12, **values, "cached_tokens": None}  # a row from before 0008 has none
    assert [type(row[k]) for k in ("status", "confidence", "scores", "stream")] == [int, float, str, int]


def test_rows_written_in_0005_batches_read_the_same_after_0006(tmp_path: Path) -> None:
    """0005 stored the rows of one write as one batch; 0006 makes each of them a row again, keeping the id
    the view gave it, its exact time and its values."""
    path = tmp_path / "audit.sqlite3"
    doc = ["2023-11-14", "r1", "chat", 200, None, "auto", "lite", "lite-model", "fake", "rules", "rule `x`", 1.0,
           None, None, {"lite": 1.0}, [], [{"strategy": "rules", "verdict": "decided"}], 0.5,
           [{"target": "lite-model", "error": None}], True, 9.5, 3.25, 4, 5, False, 1e-05, "off", []]  # fmt: skip
    times = (1700000000.123456, 1700000000.5, 1700000060.25)
    with closing(connect(path)) as conn:
        migrate(conn, MIGRATIONS[:5])
        for batch in ([0, 1], [2]):
            docs = [[times[i], doc[0], f"r{i}", *doc[2:]] for i in batch]
            conn.execute("INSERT INTO request_batch (ts, until, docs) VALUES (?, ?, ?)",
                         (times[batch[0]], times[batch[-1]], orjson.dumps(docs).decode()))  # fmt: skip
        applied = ["0006_one_row_per_request_again", "0007_a_table_per_day", "0008_cached_tokens"]
        assert migrate(conn, MIGRATIONS) == applied
        first, *_ = rows(path)
        conn.execute("INSERT INTO request_log (ts, doc) VALUES (?, ?)", (1700000100.0, orjson.dumps(doc).decode()))
    read = rows(path)
    assert [r["id"] for r in read] == [1 << 12, (1 << 12) + 1, 2 << 12, (2 << 12) + 1]  # a new row comes after
    assert [r["ts"] for r in read[:3]] == list(times) and [r["request_id"] for r in read] == ["r0", "r1", "r2", "r1"]
    assert (first["scores"], first["attempts"], first["stream"], first["cost_usd"]) == (
        '{"lite":1.0}', '[{"target":"lite-model","error":null}]', 1, 1e-05
    )  # fmt: skip
    assert [first[f] for f in DOC_FIELDS[9:13]] == ["rules", "rule `x`", 1.0, None]


def test_a_new_row_reads_back_with_the_types_of_its_columns(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = make_gateway(runtime_dir=str(tmp_path))
    with sdk(gw) as client:
        list(client.chat.completions.create(model="lite", messages=HI, stream=True))
    gw.stop()
    [row] = rows(tmp_path / "audit.sqlite3")
    assert list(row) == ["id", "ts", *DOC_FIELDS]  # the view's columns are the document's fields, in order
    assert (row["stream"], row["tokens_estimated"], row["status"]) == (1, 1, 200)  # no usage asked for: estimated
    assert isinstance(row["latency_ms"], float) and isinstance(row["ttft_ms"], float)
    assert (row["scores"], row["provenance"], row["guards"], row["error"]) == ("{}", "[]", "[]", None)
    with closing(sqlite3.connect(tmp_path / "audit.sqlite3")) as conn:
        [(doc,)] = conn.execute(f"SELECT doc FROM {day_table(int(row['ts'] // 86400))}").fetchall()
    assert SECRET not in doc and len(orjson.loads(doc)) == len(DOC_FIELDS) == 29


def test_no_record_is_lost_when_the_gateway_stops(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = make_gateway(runtime_dir=str(tmp_path), telemetry={"audit": {"flush_s": 60}})  # only close() writes
    n = BATCH - 1  # one short of a full batch: nothing wakes the writer before close()

    def post(http: httpx.Client) -> int:
        return http.post("/v1/chat/completions", json={"model": "lite", "messages": HI}).status_code

    with httpx.Client(base_url=gw.url, timeout=10) as http, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, [http] * n))
    assert statuses == [200] * n
    assert rows(tmp_path / "audit.sqlite3") == []  # every record is still queued in memory
    gw.stop()
    assert len(rows(tmp_path / "audit.sqlite3")) == n


def test_jsonl_copy_rotates_at_max_bytes_and_keeps_backups(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    jsonl = tmp_path / "logs" / "audit.jsonl"
    audit = {"jsonl_path": str(jsonl), "jsonl_max_bytes": 1500, "jsonl_backups": 2}
    gw = make_gateway(runtime_dir=str(tmp_path), telemetry={"audit": audit})
    with sdk(gw) as client:
        ids = [client.chat.completions.with_raw_response.create(model="lite", messages=HI)
               .headers["x-turnout-request-id"] for _ in range(8)]  # fmt: skip
    gw.stop()
    files = sorted(p.name for p in jsonl.parent.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    kept: list[dict[str, Any]] = []
    for name in reversed(files):  # oldest first
        data = (jsonl.parent / name).read_bytes()
        assert 0 < len(data) <= 1500
        kept += [orjson.loads(line) for line in data.splitlines()]
    assert [e["request_id"] for e in kept] == ids[-len(kept) :] and len(kept) < 8
    assert kept[-1]["route"] == "lite" and kept[-1]["attempts"][0]["target"] == "lite-model"


def test_a_row_that_cannot_be_serialized_is_dropped_and_counted_and_its_batch_is_written(tmp_path: Path) -> None:
    sink = AuditSink(validate({**base_config("http://127.0.0.1:9/v1"), "runtime_dir": str(tmp_path)}, {}))
    good = RequestRecord("good", time.time(), "chat", 200, route="lite", latency_ms=1.0)
    bad = RequestRecord("bad", time.time(), "chat", 200, route="lite", scores={1: 0.5})  # type: ignore[dict-item]

    async def run() -> None:
        await sink.start()
        sink.emit_many([good, bad, good])
        await sink.close()

    asyncio.run(run())
    assert [r["request_id"] for r in rows(tmp_path / "audit.sqlite3")] == ["good", "good"]
    assert (sink.unwritable, sink.dropped, sink.written) == (1, 1, 2)


def test_retention_deletes_rows_older_than_retention_days_at_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    conn = connect(path)
    migrate(conn, MIGRATIONS)
    now = time.time()
    for rid, age_days in (("old", 40), ("recent", 10)):
        doc = ["", rid, "chat", 200, *[None] * 15, False, 1.0, None, None, None, False, None, "off", []]
        row = (now - age_days * 86400, orjson.dumps(doc).decode())
        conn.execute("INSERT INTO request_log (ts, doc) VALUES (?, ?)", row)
    conn.close()
    config = {**base_config("http://127.0.0.1:9/v1"), "runtime_dir": str(tmp_path),
              "telemetry": {"audit": {"retention_days": 30}}}  # fmt: skip
    sink = AuditSink(validate(config, {}))

    async def start_and_stop() -> None:
        await sink.start()
        await sink.close()

    asyncio.run(start_and_stop())
    assert [r["request_id"] for r in rows(path)] == ["recent"]


def expired_store(path: Path, expired: int) -> None:
    """An audit store with `expired` rows 40 days old (old0 the oldest) and one 10 days old (`recent`)."""
    conn = connect(path)
    migrate(conn, MIGRATIONS)
    now = time.time()
    doc = orjson.dumps(["", "x", "chat", 200, *[None] * 15, False, 1.0, None, None, None, False, None, "off", []])
    old = [(now - 40 * 86400 + i, doc.decode().replace('"x"', f'"old{i}"')) for i in range(expired)]
    conn.executemany("INSERT INTO request_log (ts, doc) VALUES (?, ?)", [*old, (now - 10 * 86400, doc.decode()
                     .replace('"x"', '"recent"'))])  # fmt: skip
    conn.close()


def audit_sink(tmp_path: Path, retention_days: float = 30) -> AuditSink:
    config = {**base_config("http://127.0.0.1:9/v1"), "runtime_dir": str(tmp_path),
              "telemetry": {"audit": {"retention_days": retention_days, "flush_s": 0.05}}}  # fmt: skip
    return AuditSink(validate(config, {}))


def test_a_purge_deletes_at_most_a_chunk_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    expired_store(path, 120)
    sink = audit_sink(tmp_path)
    sink.purge_chunk = 50
    conn = connect(path)
    assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == WAL_LIMIT_BYTES  # the log is capped
    assert sink.purge(conn) == 50
    assert [r["request_id"] for r in rows(path)][:2] == ["old50", "old51"]  # the oldest went first
    assert [sink.purge(conn), sink.purge(conn), sink.purge(conn)] == [50, 20, 0]
    assert [r["request_id"] for r in rows(path)] == ["recent"]
    conn.close()


def test_a_large_purge_goes_on_while_new_rows_are_written(tmp_path: Path) -> None:
    """At start the writer deletes expired rows a chunk at a time, writing queued rows between chunks."""
    path = tmp_path / "audit.sqlite3"
    expired_store(path, 2_000)
    sink = audit_sink(tmp_path)
    sink.purge_chunk = 100

    async def run() -> None:
        await sink.start()
        for i in range(30):
            sink.emit(RequestRecord(f"new{i}", time.time(), "chat", 200))
            await asyncio.sleep(0.002)
        for _ in range(1000):  # up to 10 s for the purge (20 chunks) to finish
            if len(rows(path)) == 31:  # `recent` and the new ones
                break
            await asyncio.sleep(0.01)
        await sink.close()

    asyncio.run(run())
    assert [r["request_id"] for r in rows(path)] == ["recent", *(f"new{i}" for i in range(30))]


def write_records(sinks: list[AuditSink], records: list[RequestRecord]) -> None:
    """Start the sinks, hand record i to sink i % len(sinks), close them: everything is written."""

    async def run() -> None:
        for sink in sinks:
            await sink.start()
        for i, record in enumerate(records):
            sinks[i % len(sinks)].emit(record)
        for sink in sinks:
            await sink.close()

    asyncio.run(run())


def audit_tables(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        query = "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'request%' ORDER BY name"
        return [name for (name,) in conn.execute(query)]


def test_rows_go_to_the_table_of_their_utc_day_and_read_back_through_one_view(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    today = int(time.time() // 86400)
    times = [(today - 2) * 86400 + 5.5, (today - 1) * 86400 + 86399.75, time.time(), (today - 1) * 86400 + 1.0]
    write_records([audit_sink(tmp_path)], [RequestRecord(f"r{i}", ts, "chat", 200) for i, ts in enumerate(times)])
    assert audit_tables(path) == [day_table(today - 2), day_table(today - 1), day_table(today)]
    read = rows(path)
    assert [r["request_id"] for r in read] == ["r0", "r1", "r3", "r2"]  # by day, then in the order written
    assert [r["id"] >> 32 for r in read] == [today - 2, today - 1, today - 1, today]
    assert [r["ts"] for r in read] == [times[0], times[1], times[3], times[2]]  # exact times
    assert [r["day"] for r in read] == [time.strftime("%Y-%m-%d", time.gmtime(r["ts"])) for r in read]
    with closing(sqlite3.connect(path)) as conn:  # a time range is searched in each day's index
        plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN SELECT COUNT(*) FROM requests "
                                                   "WHERE ts >= ? AND ts < ?", (times[3], times[2])))  # fmt: skip
        assert all(f"USING INDEX {day_table(d)}_ts" in plan for d in (today - 2, today - 1, today)), plan
        window = (times[3], times[2])  # yesterday's two rows, not today's
        assert conn.execute("SELECT COUNT(*) FROM requests WHERE ts >= ? AND ts < ?", window).fetchone() == (2,)


def test_retention_drops_a_day_once_all_of_it_is_older_than_retention_days(tmp_path: Path) -> None:
    """A day's table goes once its last second is older than `retention_days`: rows are kept for at least
    the retention, and at most one day more."""
    path = tmp_path / "audit.sqlite3"
    today = int(time.time() // 86400)
    times = {"3 days": (today - 3) * 86400 + 100, "2 days": (today - 2) * 86400 + 86000,
             "yesterday": (today - 1) * 86400}  # fmt: skip
    write_records([audit_sink(tmp_path)], [RequestRecord(rid, ts, "chat", 200) for rid, ts in times.items()])
    assert len(audit_tables(path)) == 3
    # Each start purges. Retention 2 days: the day 3 days ago ended before now - 2 days; the one 2 days
    # ago ends after it, so it stays, whatever the time of day (and whether or not its row has expired).
    write_records([audit_sink(tmp_path, retention_days=2)], [])
    assert audit_tables(path) == [day_table(today - 2), day_table(today - 1)]
    write_records([audit_sink(tmp_path, retention_days=1)], [])
    assert audit_tables(path) == [day_table(today - 1)]
    assert [r["request_id"] for r in rows(path)] == ["yesterday"]
    write_records([audit_sink(tmp_path, retention_days=1e-6)], [])
    assert audit_tables(path) == [] and rows(path) == []  # every day gone: the view reads as empty


def test_workers_writing_one_store_make_each_day_once(tmp_path: Path) -> None:
    """Several worker processes write one store: each makes the day's table if it is not there yet."""
    path = tmp_path / "audit.sqlite3"
    today = int(time.time() // 86400)
    records = [RequestRecord(f"r{i}", (today - i % 3) * 86400 + i, "chat", 200) for i in range(60)]
    write_records([audit_sink(tmp_path), audit_sink(tmp_path)], records)
    assert audit_tables(path) == [day_table(today - 2), day_table(today - 1), day_table(today)]
    assert sorted(r["request_id"] for r in rows(path)) == sorted(r.request_id for r in records)


def test_a_day_dropped_by_another_worker_is_made_again_on_the_retry(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    sink = audit_sink(tmp_path)

    async def run() -> None:
        await sink.start()
        sink.emit(RequestRecord("first", time.time(), "chat", 200))
        await until(lambda: sink.written == 1)
        with closing(connect(path)) as other:  # another process drops the day the writer knows
            other.execute(f"DROP TABLE {day_table(int(time.time() // 86400))}")
            remake_view(other)
        sink.emit(RequestRecord("second", time.time(), "chat", 200))
        await until(lambda: sink.written == 2)  # the write failed, and the retry made the day again
        await sink.close()

    asyncio.run(run())
    assert [r["request_id"] for r in rows(path)] == ["second"] and sink.dropped == 0


async def until(done: Callable[[], bool]) -> None:
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 5 s")


def test_the_view_reads_more_days_than_one_sqlite_union_may_hold() -> None:
    """SQLite allows 500 terms per compound SELECT: a retention of years is a union of unions."""
    with closing(sqlite3.connect(":memory:")) as conn:
        for day in range(20000, 21200):
            make_day_table(conn, day)
            conn.execute(f"INSERT INTO {day_table(day)} (ts, doc) VALUES (?, ?)", (day * 86400.0 + 1, '["x"]'))
        remake_view(conn)
        assert conn.execute("SELECT COUNT(*), MIN(id) >> 32, MAX(id) >> 32 FROM requests").fetchone() == (
            1200, 20000, 21199
        )  # fmt: skip
        window = (20500 * 86400.0, 20502 * 86400.0)
        assert conn.execute("SELECT day FROM requests WHERE ts >= ? AND ts < ?", window).fetchall() == [("x",)] * 2


def test_a_full_disk_drops_audit_rows_says_so_once_and_never_fails_a_request(
    tmp_path: Path, upstream: UpstreamThread
) -> None:
    """`turnout serve` with a file-size limit (RLIMIT_FSIZE, its soft limit only): past it, SQLite's writes
    fail as on a full disk. Requests go on; the dropped rows are counted on /metrics; the log has one error
    for the whole failing spell; once the limit is lifted, writes resume and say so."""
    config = base_config(upstream.url, runtime_dir=str(tmp_path / "runtime"))
    config["telemetry"] = {"batch_delay_s": 0.01, "audit": {"flush_s": 0.05, "jsonl_path": str(tmp_path / "a.jsonl")}}
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    limit = 320 * 1024  # the schema and its first day fit; a few hundred rows do not
    (tmp_path / "a.jsonl").write_bytes(b"\n" * (limit - 100))  # the JSONL copy fails from its first batch on

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    command = [sys.executable, "-m", "turnout", "serve", "--config", str(path), "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=small_files)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def log_rows(outcome: str) -> float:
        text = httpx.get(url + "/metrics", timeout=10).text
        found = re.search(rf'turnout_log_rows_total{{log="audit",outcome="{outcome}"}} (\S+)', text)
        return float(found[1]) if found else 0.0

    def wait_for(done: Callable[[], bool]) -> None:
        for _ in range(500):
            if done():
                return
            time.sleep(0.02)
        raise AssertionError("timed out")

    try:
        wait_for(lambda: proc.poll() is None and _answers(url + "/health"))
        with httpx.Client(base_url=url, timeout=10) as client:
            body = {"model": "lite", "messages": HI}
            assert {client.post("/v1/chat/completions", json=body).status_code for _ in range(800)} == {200}
            wait_for(lambda: log_rows("dropped") > 0)
            written = log_rows("written")
            assert 0 < written < 800
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            assert {client.post("/v1/chat/completions", json=body).status_code for _ in range(50)} == {200}
            wait_for(lambda: log_rows("written") >= written + 50)
            dropped = log_rows("dropped")
            assert log_rows("written") + dropped == 850  # each row once: written or counted
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=15)[0]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    said = [(x["level"], x["message"]) for x in lines if x["message"].startswith("audit log:")]
    expected = [  # once each, not once a batch or a flap (the store flaps: a checkpoint makes room for a while)
        ("WARNING", "audit log: a write failed (OperationalError: "),  # retried on the next flushes...
        ("ERROR", "audit log: writes keep failing (OperationalError: "),  # ...then dropped
        ("WARNING", "audit log: writing again; "),
        ("WARNING", f"audit log: {dropped:.0f} records were dropped"),  # the count at shutdown
        ("ERROR", f"audit log: writing `{tmp_path / 'a.jsonl'}` failed; "),  # the JSONL copy, once too
    ]
    assert said[-1][1].startswith(expected[3][1]), said
    assert sorted((level, next(w for _, w in expected if m.startswith(w))) for level, m in said) == sorted(expected)
    assert SECRET not in out


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_prompts_completions_and_keys_never_reach_the_audit_files(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    inbound = "sk-inbound-key-987654321"
    jsonl = tmp_path / "audit.jsonl"
    gw = make_gateway(
        runtime_dir=str(tmp_path),
        auth={"keys": [inbound]},
        models={"judge-model": {"upstream": "fake", "name": "fake?judge=1"}},
        routes={"broken": {"targets": ["m-401"]}},
        routers={"judged": {"routes": ["lite", "deep"], "strategies": ["llm"], "fallback": "lite",
                            "llm": {"model": "judge-model"}}},
        telemetry={"audit": {"jsonl_path": str(jsonl)}},
    )  # fmt: skip
    image = [{"type": "text", "text": SECRET}, {"type": "image_url", "image_url": {"url": IMAGE}}]
    with sdk(gw, inbound) as client:
        client.chat.completions.create(model="auto", messages=HI)
        client.chat.completions.create(model="judged", messages=[{"role": "user", "content": "route:deep " + SECRET}])
        list(client.chat.completions.create(model="deep", messages=HI, stream=True))
        client.chat.completions.create(model="lite", messages=[{"role": "user", "content": image}])  # type: ignore[misc,list-item]
        r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "broken", "messages": HI},
                       headers={"authorization": f"Bearer {inbound}"})  # fmt: skip
        assert r.status_code == 502
    gw.stop()
    recs = rows(tmp_path / "audit.sqlite3")
    assert [r["route"] for r in recs] == ["lite", "deep", "deep", "lite", "broken"]
    assert (recs[1]["strategy"], recs[1]["reason"]) == ("llm", "llm_verdict")  # the judge's words are not kept
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(("audit.", "review.")))
    for needle in (SECRET, "route:deep", UPSTREAM_KEY, inbound, "sk-live-abcdef123456", "Hello from the fake",
                   "tok0", "fake judge chose", IMAGE[:40]):  # fmt: skip
        assert needle.encode() not in blobs, needle
    assert not (tmp_path / "review.sqlite3").exists() and gw.app.telemetry.review is None


def test_review_log_keeps_scrubbed_prompts_only_when_enabled(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = make_gateway(runtime_dir=str(tmp_path), telemetry={"review_log": {"enabled": True}})
    content = [{"type": "text", "text": f"{SECRET} see {IMAGE}"}, {"type": "image_url", "image_url": {"url": IMAGE}}]
    with sdk(gw) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": content}],  # type: ignore[misc,list-item]
            tools=[{"type": "function", "function": {"name": "get_weather", "description": "weather in a city"}}],
        )
    for _ in range(500):  # both logs' writers count their rows on /metrics
        page = httpx.get(gw.url + "/metrics").text
        if all(f'turnout_log_rows_total{{log="{name}",outcome="written"}} 1.0' in page for name in ("audit", "review")):
            break
        time.sleep(0.01)
    else:
        raise AssertionError(page)
    assert 'turnout_log_rows_total{log="review",outcome="dropped"} 0.0' in page
    assert 'turnout_log_queue_rows{log="review"} 0.0' in page
    gw.stop()
    [row] = rows(tmp_path / "review.sqlite3", "prompts")
    assert (row["request_id"], row["router"], row["route"], row["model"], row["endpoint"]) == (
        raw.headers["x-turnout-request-id"], "auto", "lite", "lite-model", "chat"
    )  # fmt: skip
    system, user = orjson.loads(row["messages"])
    assert system == {"role": "system", "content": "be brief"}
    assert user["content"] == [{"type": "text", "text": f"{SECRET} see [image]"},
                               {"type": "image_url", "image_url": {"url": "[image]"}}]  # fmt: skip
    assert orjson.loads(row["params"]) == {"tools": [{"type": "function", "function": {"name": "get_weather"}}]}
    assert IMAGE[30:80].encode() not in (tmp_path / "review.sqlite3").read_bytes()
    assert SECRET.encode() not in (tmp_path / "audit.sqlite3").read_bytes()


def test_an_expired_prompt_is_overwritten_in_the_review_store(tmp_path: Path) -> None:
    """The review log deletes expired prompts with SQLite's secure delete on, whatever its build default:
    once purged, a prompt's bytes are in no file of the store."""
    config = {**base_config("http://127.0.0.1:9/v1"), "runtime_dir": str(tmp_path),
              "telemetry": {"review_log": {"enabled": True, "retention_days": 1}}}  # fmt: skip
    review = PromptReviewLog(validate(config, {}))

    async def run() -> None:
        await review.start()
        expired = {"messages": [{"role": "user", "content": f"{SECRET} expired"}]}
        review.capture(RequestRecord("old", time.time() - 2 * 86400, "chat", 200), expired)
        review.capture(RequestRecord("new", time.time(), "chat", 200), {"messages": [{"role": "user", "content": "a"}]})
        await review.close()  # writes both, then the purge deletes the old one

    asyncio.run(run())
    assert [r["request_id"] for r in rows(tmp_path / "review.sqlite3", "prompts")] == ["new"]
    files = list(tmp_path.glob("review.sqlite3*"))
    assert files and all(SECRET.encode() not in f.read_bytes() for f in files)
    # the check can fail: without secure delete, a deleted row's bytes stay in the page
    with closing(sqlite3.connect(tmp_path / "plain.sqlite3")) as conn:
        conn.execute("PRAGMA secure_delete = OFF")
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute("INSERT INTO t VALUES (?)", (SECRET,))
        conn.commit()
        conn.execute("DELETE FROM t")
        conn.commit()
    assert SECRET.encode() in (tmp_path / "plain.sqlite3").read_bytes()


def test_review_log_refuses_to_exist_when_not_enabled() -> None:
    with pytest.raises(ValueError, match="never implicit"):
        PromptReviewLog(validate(base_config("http://127.0.0.1:9/v1"), {}))


def test_day_names_change_at_utc_midnight_whatever_was_asked_before() -> None:
    from turnout.telemetry.audit import utc_day

    midnight = 1796515200.0  # 2026-12-06T00:00:00Z
    assert [utc_day(midnight - 0.001), utc_day(midnight), utc_day(midnight + 86399.5)] == [
        "2026-12-05", "2026-12-06", "2026-12-06",
    ]  # fmt: skip
    assert utc_day(midnight - 86400 * 365) == "2025-12-06" and utc_day(midnight + 86400) == "2026-12-07"
    assert utc_day(midnight - 1) == "2026-12-05"


def test_a_failed_transaction_leaves_nothing_behind_and_the_connection_usable(tmp_path: Path) -> None:
    with closing(connect(tmp_path / "t.sqlite3")) as conn:
        with pytest.raises(sqlite3.OperationalError), immediate(conn):
            make_day_table(conn, 20000)
            conn.execute("INSERT INTO no_such_table VALUES (1)")
        assert not conn.in_transaction
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []
        with immediate(conn):
            make_day_table(conn, 20000)
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == [day_table(20000)]
