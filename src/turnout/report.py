"""`turnout report`: a daily health summary from the audit log, for a person or for cron.

For one UTC day (default: yesterday, the last complete one) and the day before, over chat requests:

    traffic per route   requests and share; drift is how far a route's share moved from the previous day
    errors              requests answered with a 5xx (every target failed, timeouts, shutdown), by kind
    upstream failures   failed attempts per model and kind, those a retry or fallback recovered included
    low confidence      share of routed decisions that were the fallback route after a strategy's proposal
                        was turned down by threshold or margin, or that cleared their threshold by less
                        than `telemetry.report.low_confidence_band`
    fallback            share of routed decisions that went to the router's fallback route; also the share
                        of answers that came from a target other than the route's first
    p95                 response time: a JSON answer's latency, a stream's time to first token

Exit status: 0 when every check passes (a day with fewer than `report.min_requests` requests is never
checked), 1 when a `telemetry.report` threshold is crossed, 2 when there is no audit log.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import sys
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from turnout.config import ReportConfig
from turnout.errors import TurnoutError
from turnout.telemetry.audit import DAY_S, audit_path, day_start, open_store, parse_day
from turnout.usage import table

TURNED_DOWN = ("below_threshold", "below_margin")


@dataclass
class DayStats:
    day: date
    requests: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # 5xx answers by error kind
    attempt_failures: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, kind)
    routed: int = 0
    fallback: int = 0
    low_confidence: int = 0
    answered: int = 0
    other_target: int = 0
    times: list[float] = field(default_factory=list)

    @property
    def shares(self) -> dict[str, float]:
        total = sum(self.routes.values())
        return {r: n / total for r, n in self.routes.items()} if total else {}

    def p95(self) -> float | None:
        if not self.times:
            return None
        ordered = sorted(self.times)
        return ordered[math.ceil(0.95 * len(ordered)) - 1]


def is_low_confidence(row: sqlite3.Row, band: float) -> bool:
    if row["strategy"] == "fallback":
        return any(t.get("verdict") in TURNED_DOWN for t in orjson.loads(row["trace"] or "[]"))
    confidence, threshold = row["confidence"], row["threshold"]
    return confidence is not None and threshold is not None and confidence - threshold < band


def day_stats(conn: sqlite3.Connection, day: date, band: float) -> DayStats:
    s = DayStats(day)
    start = day_start(day)
    rows = conn.execute(
        """SELECT router, route, model, strategy, status, error, confidence, threshold, trace, attempts, stream,
                  latency_ms, ttft_ms
           FROM requests WHERE endpoint = 'chat' AND ts >= ? AND ts < ?""",
        (start, start + DAY_S),
    )
    for row in rows:
        s.requests += 1
        if row["route"] is not None:
            s.routes[row["route"]] += 1
        if row["status"] >= 500:
            s.errors[row["error"] or "unknown"] += 1
        attempts = orjson.loads(row["attempts"] or "[]")
        for a in attempts:
            if a.get("error"):
                s.attempt_failures[(str(a.get("target")), str(a["error"]))] += 1
        if row["router"] is not None:
            s.routed += 1
            s.fallback += row["strategy"] == "fallback"
            s.low_confidence += is_low_confidence(row, band)
        if row["status"] == 200:
            s.answered += 1
            s.other_target += bool(attempts) and attempts[0].get("target") != row["model"]
            ttft = row["ttft_ms"]
            s.times.append(ttft if row["stream"] and ttft is not None else row["latency_ms"])
    return s


def requests_after(conn: sqlite3.Connection, day: date) -> int:
    """Chat requests logged after `day`: said beside a report of a day with none (yesterday, by default,
    is empty just after midnight UTC on a gateway that started today)."""
    row = conn.execute(
        "SELECT COUNT(*) FROM requests WHERE endpoint = 'chat' AND ts >= ?", (day_start(day) + DAY_S,)
    ).fetchone()
    return int(row[0])


def _rate(n: int, of: int) -> float:
    return round(n / of, 4) if of else 0.0


def build_report(today: DayStats, before: DayStats, cfg: ReportConfig) -> dict[str, Any]:
    shares, old = today.shares, before.shares
    routes: list[dict[str, Any]] = [
        {
            "route": r,
            "requests": today.routes.get(r, 0),
            "share": round(shares.get(r, 0.0), 4),
            "previous_share": round(old[r], 4) if r in old else None,
            "drift": round(shares.get(r, 0.0) - old.get(r, 0.0), 4) if old else None,
        }
        for r in sorted(set(shares) | set(old))
    ]
    error_requests = sum(today.errors.values())
    p95 = today.p95()
    slow = sum(t > cfg.max_p95_ms for t in today.times)
    drift = max((abs(r["drift"]) for r in routes if r["drift"] is not None), default=None)
    checked = today.requests >= cfg.min_requests
    checks = []
    for name, value, limit, key in (
        ("error rate", _rate(error_requests, today.requests), cfg.max_error_rate, "max_error_rate"),
        ("fallback rate", _rate(today.fallback, today.routed), cfg.max_fallback_rate, "max_fallback_rate"),
        (
            "low-confidence share",
            _rate(today.low_confidence, today.routed),
            cfg.max_low_confidence,
            "max_low_confidence",
        ),
        ("p95 response time (ms)", p95, cfg.max_p95_ms, "max_p95_ms"),
        (
            "route share drift",
            drift if before.requests >= cfg.min_requests else None,
            cfg.max_share_drift,
            "max_share_drift",
        ),
    ):
        if checked and value is not None:
            checks.append(
                {
                    "check": name,
                    "value": value,
                    "limit": limit,
                    "ok": value <= limit,
                    "setting": f"telemetry.report.{key}",
                }
            )
    return {
        "object": "turnout.report",
        "day": today.day.isoformat(),
        "previous_day": before.day.isoformat(),
        "requests": today.requests,
        "previous_requests": before.requests,
        "routes": routes,
        "errors": {
            "requests": error_requests,
            "rate": _rate(error_requests, today.requests),
            "by_kind": dict(today.errors.most_common()),
        },
        "upstream_failures": [
            {"model": m, "error": k, "attempts": n} for (m, k), n in today.attempt_failures.most_common()
        ],
        "low_confidence": {"decisions": today.low_confidence, "share": _rate(today.low_confidence, today.routed)},
        "fallback": {
            "decisions": today.fallback,
            "rate": _rate(today.fallback, today.routed),
            "other_target_rate": _rate(today.other_target, today.answered),
        },
        "routed": today.routed,
        "latency": {"p95_ms": None if p95 is None else round(p95, 1), "slow": slow},
        "checked": checked,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


# --- the command ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--day", metavar="YYYY-MM-DD", help="the UTC day to report, `today` or `yesterday` (default: yesterday)"
    )
    parser.add_argument("--audit", metavar="FILE", help="audit SQLite file (default: the config's)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def pick_day(value: str | None) -> date:
    today = datetime.now(UTC).date()
    if value in (None, "yesterday"):
        return today - timedelta(days=1)
    if value == "today":
        return today
    return parse_day(value, "--day")


def run(args: argparse.Namespace) -> int:
    from turnout.cli import resolve_config_path
    from turnout.config import load_config

    settings, _ = load_config(resolve_config_path(args.config))
    cfg = settings.telemetry.report
    day = pick_day(args.day)
    path = Path(args.audit) if args.audit else audit_path(settings)
    try:
        conn = open_store(path)
    except TurnoutError as exc:
        print(f"turnout: {exc.message}", file=sys.stderr)
        return 2
    with closing(conn):
        rep = build_report(
            day_stats(conn, day, cfg.low_confidence_band),
            day_stats(conn, day - timedelta(days=1), cfg.low_confidence_band),
            cfg,
        )
        rep["requests_after"] = requests_after(conn, day) if not rep["requests"] else None
    rep["audit"] = str(path)
    if args.json:
        print(orjson.dumps(rep, option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(rep, cfg)
    return 0 if rep["ok"] else 1


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_report(rep: dict[str, Any], cfg: ReportConfig) -> None:
    print(f"turnout report for {rep['day']} (UTC), from {rep['audit']}")
    print(f"requests: {rep['requests']} (previous day: {rep['previous_requests']})")
    if rep.get("requests_after"):
        print(
            f"note: no requests on {rep['day']}, {rep['requests_after']} after it; `--day today` reports today "
            "so far, `--day YYYY-MM-DD` another day"
        )
    if rep["routes"]:
        rows = [["route", "requests", "share", "previous", "drift"]]
        for r in rep["routes"]:
            drift = "-" if r["drift"] is None else f"{100 * r['drift']:+.1f}"
            rows.append([r["route"], str(r["requests"]), _pct(r["share"]), _pct(r["previous_share"]), drift])
        print("\n" + table(rows) + "\n")
    e = rep["errors"]
    kinds = ", ".join(f"{k} {n}" for k, n in e["by_kind"].items())
    print(f"errors (5xx): {e['requests']} ({_pct(e['rate'])}){': ' + kinds if kinds else ''}")
    failures = "; ".join(f"{f['model']} {f['error']} {f['attempts']}" for f in rep["upstream_failures"]) or "none"
    print(f"upstream failures (failed attempts, recovered or not): {failures}")
    print(f"low-confidence decisions: {_pct(rep['low_confidence']['share'])} of {rep['routed']} routed")
    f = rep["fallback"]
    print(
        f"fallback route: {_pct(f['rate'])} of routed decisions; answered by a fallback target: "
        f"{_pct(f['other_target_rate'])}"
    )
    lat = rep["latency"]
    p95 = "-" if lat["p95_ms"] is None else f"{lat['p95_ms']:.0f} ms"
    print(f"p95 response time: {p95} (streams: time to first token); {lat['slow']} slower than {cfg.max_p95_ms:.0f} ms")
    if not rep["checked"]:
        print(f"\nchecks: skipped, fewer than {cfg.min_requests} requests (`telemetry.report.min_requests`)")
        return
    print("\nchecks:")
    for c in rep["checks"]:
        value = f"{c['value']:.0f}" if c["check"].endswith("(ms)") else _pct(c["value"])
        limit = f"{c['limit']:.0f}" if c["check"].endswith("(ms)") else _pct(c["limit"])
        verdict, sign = ("ok  ", "<=") if c["ok"] else ("FAIL", ">")
        print(f"  {verdict}  {c['check']} {value} {sign} {limit}  (`{c['setting']}`)")
