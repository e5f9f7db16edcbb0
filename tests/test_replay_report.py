"""`turnout replay` and `turnout report`, on audit logs written by a real gateway and by the real audit sink."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import GatewayFactory, UpstreamThread, base_config, sdk
from turnout.cli import main
from turnout.config import validate
from turnout.telemetry.audit import AuditSink, day_start
from turnout.types import Attempt, RequestRecord

PRICED = {
    "lite-model": {"upstream": "fake", "name": "fake-lite", "input_price": 1.0, "output_price": 2.0},
    "deep-model": {"upstream": "fake", "name": "fake-deep", "input_price": 10.0, "output_price": 20.0},
}
HI_TEXT = [{"role": "user", "content": "hello there"}]
LITE = (8 * 1.0 + 7 * 2.0) / 1e6
DEEP = (8 * 10.0 + 7 * 20.0) / 1e6


def rules_router(*keywords: str) -> dict[str, Any]:
    return {"auto": {"routes": ["lite", "deep"], "strategies": ["explicit", "rules"], "fallback": "lite",
                     "rules": [{"name": "hard", "route": "deep", "keywords": list(keywords)}]}}  # fmt: skip


def write_config(path: Path, upstream_url: str, **sections: Any) -> str:
    config = copy.deepcopy(base_config(upstream_url))
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


# --- replay -----------------------------------------------------------------------------------------


@pytest.fixture
def logged(make_gateway: GatewayFactory, tmp_path: Path) -> Path:
    """Five requests decided by rules, the fallback and an explicit hint, with the review log on."""
    gw = make_gateway(runtime_dir=str(tmp_path), models=PRICED, routers=rules_router("prove"),
                      telemetry={"review_log": {"enabled": True}})  # fmt: skip
    with sdk(gw) as client:
        for text in ("please prove this", "prove it again", "hello there", "hello again"):
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": text}])
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello, deep"}],
                                       extra_body={"metadata": {"route": "deep"}})  # fmt: skip
    gw.stop()
    return tmp_path


def test_replay_with_the_review_log_re_decides_every_request(
    logged: Path, upstream: UpstreamThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = write_config(tmp_path / "new.yaml", upstream.url, models=PRICED, routers=rules_router("prove", "hello"))
    code, rep = run_json(capsys, "replay", str(logged / "audit.sqlite3"), "--config", new)
    assert code == 0 and rep["review"] == str(logged / "review.sqlite3")
    assert (rep["logged"], rep["replayed"], rep["skipped"], rep["flipped"]) == (5, 5, {}, 2)
    assert rep["flips"] == [{"from": "lite", "to": "deep", "requests": 2}]
    assert rep["shares"] == {"before": {"deep": 0.6, "lite": 0.4}, "after": {"deep": 1.0}}
    assert rep["cost"]["before_usd"] == pytest.approx(3 * DEEP + 2 * LITE)
    assert rep["cost"]["after_usd"] == pytest.approx(5 * DEEP)
    assert {c["strategy"] for c in rep["changes"]} == {"rules"} and rep["note"] is None
    assert main(["replay", str(logged / "audit.sqlite3"), "--config", new]) == 0
    out = capsys.readouterr().out
    assert "route flips: 2 (40.0%)" in out and "lite -> deep: 2" in out and "est. cost" in out


def test_replay_without_the_review_log_replays_explicit_decisions_and_says_why_not_the_rest(
    logged: Path, upstream: UpstreamThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alone = tmp_path / "copy"
    alone.mkdir()
    shutil.copy(logged / "audit.sqlite3", alone / "audit.sqlite3")
    new = write_config(tmp_path / "new.yaml", upstream.url, models=PRICED, routers=rules_router("hello"))
    code, rep = run_json(capsys, "replay", str(alone / "audit.sqlite3"), "--config", new)
    assert code == 0 and rep["review"] is None
    assert (rep["logged"], rep["replayed"], rep["skipped"], rep["flipped"]) == (5, 1, {"needs_text": 4}, 0)
    assert "there is no review log" in rep["note"] and "telemetry.review_log" in rep["note"]
    assert main(["replay", str(alone / "audit.sqlite3"), "--config", new]) == 0
    out = capsys.readouterr().out
    assert "review log: none (only decisions that needed no text can be replayed)" in out
    assert "4 of 5 requests were decided from their text" in out


def hints_router(fallback: str) -> dict[str, Any]:
    return {"auto": {"routes": ["lite", "deep"], "strategies": ["explicit"], "fallback": fallback}}


def test_replay_without_the_review_log_replays_a_fallback_that_no_text_decided(
    make_gateway: GatewayFactory, upstream: UpstreamThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A router whose only strategy reads hints: its fallback needed no text, so it replays without it,
    unless the new router would read the text first."""
    gw = make_gateway(runtime_dir=str(tmp_path), models=PRICED, routers=hints_router("lite"))
    with sdk(gw) as client:
        client.chat.completions.create(model="auto", messages=HI_TEXT)  # explicit abstains: the fallback, lite
        client.chat.completions.create(model="auto", messages=HI_TEXT, extra_body={"metadata": {"route": "deep"}})
    gw.stop()
    audit = str(tmp_path / "audit.sqlite3")

    flipped = write_config(tmp_path / "flip.yaml", upstream.url, models=PRICED, routers=hints_router("deep"))
    code, rep = run_json(capsys, "replay", audit, "--config", flipped)
    assert code == 0 and rep["review"] is None and rep["note"] is None
    assert (rep["logged"], rep["replayed"], rep["skipped"], rep["flipped"]) == (2, 2, {}, 1)
    assert rep["flips"] == [{"from": "lite", "to": "deep", "requests": 1}]
    assert [c["strategy"] for c in rep["changes"]] == ["fallback"]

    reads = write_config(tmp_path / "rules.yaml", upstream.url, models=PRICED, routers=rules_router("hello"))
    code, rep = run_json(capsys, "replay", audit, "--config", reads)
    assert (rep["logged"], rep["replayed"], rep["skipped"], rep["flipped"]) == (2, 1, {"needs_text": 1}, 0)


# --- report -----------------------------------------------------------------------------------------


def record(ts: float, route: str, *, strategy: str = "rules", status: int = 200, latency: float = 100.0,
           trace: list[dict[str, Any]] | None = None, failed: bool = False) -> RequestRecord:  # fmt: skip
    model = f"{route}-model"
    rec = RequestRecord(f"r{ts}", ts, "chat", status, router="auto", route=route, model=model, strategy=strategy)
    rec.latency_ms, rec.trace = latency, trace or []
    rec.confidence = 1.0 if strategy == "rules" else None
    rec.attempts = [Attempt(model, "http_500" if failed else None, 500 if failed else 200, latency)]
    rec.error = "upstream_5xx" if failed else None
    return rec


def write_audit(runtime_dir: Path, records: list[RequestRecord]) -> None:
    """Through the real audit sink: queue, writer thread, SQLite."""
    sink = AuditSink(validate({**base_config("http://127.0.0.1:9/v1"), "runtime_dir": str(runtime_dir)}, {}))

    async def go() -> None:
        await sink.start()
        for r in records:
            sink.emit(r)
        await sink.close()

    asyncio.run(go())


DAY = datetime.now(UTC).date() - timedelta(days=1)
BEFORE = day_start(DAY - timedelta(days=1))
ON = day_start(DAY)
DOWN = [{"strategy": "rules", "verdict": "abstained"},
        {"strategy": "semantic", "verdict": "below_threshold", "route": "deep", "confidence": 0.1}]  # fmt: skip


def test_report_passes_a_healthy_day_and_fails_a_bad_one(
    upstream: UpstreamThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steady = [record(BEFORE + i, "lite" if i % 2 else "deep") for i in range(20)]
    healthy, bad = tmp_path / "healthy", tmp_path / "bad"
    write_audit(healthy, [*steady, *(record(ON + i, "lite" if i % 2 else "deep") for i in range(20))])
    write_audit(bad, [
        *steady,
        *(record(ON + i, "lite", strategy="fallback", trace=DOWN) for i in range(13)),  # near misses
        record(ON + 13, "lite", latency=60_000.0),
        *(record(ON + 14 + i, "deep") for i in range(3)),
        *(record(ON + 17 + i, "deep", status=502, failed=True) for i in range(3)),
    ])  # fmt: skip
    config = write_config(tmp_path / "t.yaml", upstream.url, telemetry={"report": {"min_requests": 10}})
    day = DAY.isoformat()

    code, rep = run_json(capsys, "report", "--config", config, "--audit", str(healthy / "audit.sqlite3"))
    assert code == 0 and rep["ok"] and rep["day"] == day and (rep["requests"], rep["previous_requests"]) == (20, 20)
    assert {c["check"] for c in rep["checks"]} >= {"error rate", "fallback rate", "route share drift"}

    code, rep = run_json(capsys, "report", "--config", config, "--audit", str(bad / "audit.sqlite3"), "--day", day)
    assert code == 1 and not rep["ok"]
    failed = {c["check"] for c in rep["checks"] if not c["ok"]}
    assert failed == {"error rate", "fallback rate", "low-confidence share", "p95 response time (ms)",
                      "route share drift"}  # fmt: skip
    assert rep["errors"] == {"requests": 3, "rate": 0.15, "by_kind": {"upstream_5xx": 3}}
    assert rep["upstream_failures"] == [{"model": "deep-model", "error": "http_500", "attempts": 3}]
    assert (rep["fallback"]["rate"], rep["low_confidence"]["share"]) == (0.65, 0.65)
    assert [(r["route"], r["share"], r["drift"]) for r in rep["routes"]] == [("deep", 0.3, -0.2), ("lite", 0.7, 0.2)]

    assert main(["report", "--config", config, "--audit", str(bad / "audit.sqlite3"), "--day", day]) == 1
    out = capsys.readouterr().out
    assert "FAIL  error rate 15.0% > 5.0%  (`telemetry.report.max_error_rate`)" in out
    quiet = (DAY - timedelta(days=5)).isoformat()  # no traffic: summarised, never failed
    assert main(["report", "--config", config, "--audit", str(bad / "audit.sqlite3"), "--day", quiet]) == 0
    out = capsys.readouterr().out
    assert f"note: no requests on {quiet}, 40 after it; `--day today` reports today so far" in out
    code, rep = run_json(capsys, "report", "--config", config, "--audit", str(bad / "audit.sqlite3"), "--day", day)
    assert rep["requests_after"] is None  # a day with traffic: no note
    code, rep = run_json(capsys, "report", "--config", config, "--audit", str(bad / "audit.sqlite3"), "--day", "today")
    assert (rep["requests"], rep["requests_after"]) == (0, 0)  # nothing logged today or since
    assert main(["report", "--config", config, "--audit", str(tmp_path / "missing.sqlite3")]) == 2
