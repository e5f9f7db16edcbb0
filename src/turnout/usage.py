"""Usage and cost from the audit log: `GET /usage` and `turnout usage`.

Chat requests, grouped by any of day (UTC), router, route and model:

    requests            chat requests, answered or not; `errors` counts those with a 4xx or 5xx status
    prompt_tokens, ...  as the upstream reported them; `estimated_requests` counts requests whose tokens
                        were estimated because the upstream reported no usage; `cached_tokens`, the part
                        of prompt_tokens the upstream served from its prompt cache
    cost_usd            the records' cost: the answering model's prices at the time (a model without
                        prices counts as free; cached prompt tokens at its `cached_input_price`, if set)
    baseline_cost_usd   what the same tokens would have cost on the router's most expensive route: for each
                        routed request, the highest cost among its router's routes, each priced at its first
                        target's current prices; a request that named a route as its `model` (no router
                        decided) is its own baseline, and so is one whose router is no longer configured
    savings_usd         baseline minus cost (negative when a fallback target cost more than that)
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qs

import orjson

from turnout.config import Settings
from turnout.errors import PathNotFound, RequestError
from turnout.telemetry.audit import audit_path, cached_tokens_column, day_start, open_store, parse_day

GROUPS = ("day", "router", "route", "model")
SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "estimated_requests",
    "cost_usd",
    "baseline_cost_usd",
    "savings_usd",
)
MONEY = ("cost_usd", "baseline_cost_usd", "savings_usd")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    since: date | None = None  # first UTC day, inclusive
    until: date | None = None  # last UTC day, inclusive
    group_by: tuple[str, ...] = GROUPS

    def bounds(self) -> tuple[float, float]:
        lo = day_start(self.since) if self.since else 0.0
        hi = day_start(self.until + timedelta(days=1)) if self.until else float("inf")
        return lo, hi


def parse_group_by(value: str) -> tuple[str, ...]:
    if value.strip() in ("", "none"):
        return ()
    parts = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    bad = [p for p in parts if p not in GROUPS]
    if bad:
        valid = ", ".join(f"`{g}`" for g in GROUPS)
        raise RequestError(f"`group_by`: cannot group by `{bad[0]}`; use any of {valid}, or `none`", param="group_by")
    return parts


def parse_query(query: str) -> UsageQuery:
    """`since=YYYY-MM-DD&until=YYYY-MM-DD&group_by=day,route` (all optional)."""
    params = parse_qs(query, keep_blank_values=True)
    for key in params:
        if key not in ("since", "until", "group_by"):
            raise RequestError(f"unknown query parameter `{key}`; use `since`, `until`, `group_by`", param=key)
    one = {k: v[-1] for k, v in params.items()}
    return UsageQuery(
        since=parse_day(one["since"], "since") if one.get("since") else None,
        until=parse_day(one["until"], "until") if one.get("until") else None,
        group_by=parse_group_by(one["group_by"]) if "group_by" in one else GROUPS,
    )


def baseline_sql(settings: Settings, column: str = "cached_tokens") -> tuple[str, list[Any]]:
    """An SQL expression for one row's baseline cost in USD, and its parameters (see the module doc);
    `column` is the cached tokens' (cached_tokens_column)."""
    # ModelConfig.cost_usd in SQL: cached prompt tokens (at most all of them) at the cached price
    cached = f"MIN(COALESCE({column}, 0), COALESCE(prompt_tokens, 0))"
    tokens = f"(COALESCE(prompt_tokens, 0) * ? + {cached} * (? - ?) + COALESCE(completion_tokens, 0) * ?)"
    cases: list[str] = []
    params: list[Any] = []
    for name, router in settings.routers.items():
        prices = list(
            dict.fromkeys(
                (m.input_price, m.cached_price, m.input_price, m.output_price)
                for m in (settings.models[settings.routes[r].targets[0]] for r in router.routes)
            )
        )
        if len(prices) == 1:
            prices *= 2  # SQLite's MAX with one argument is the aggregate; with two or more it is scalar
        cases.append(f"WHEN ? THEN MAX({', '.join([tokens] * len(prices))}) / 1e6")
        params += [name, *(p for pair in prices for p in pair)]
    actual = "COALESCE(cost_usd, 0)"
    if not cases:
        return actual, []
    return f"CASE router {' '.join(cases)} ELSE {actual} END", params


def summarise(conn: sqlite3.Connection, settings: Settings, q: UsageQuery) -> dict[str, Any]:
    column = cached_tokens_column(conn)
    baseline, params = baseline_sql(settings, column)
    groups = ", ".join(q.group_by)
    sql = f"""
        SELECT {groups + "," if groups else ""}
            COUNT(*) AS requests,
            SUM(status >= 400) AS errors,
            SUM(COALESCE(prompt_tokens, 0)) AS prompt_tokens,
            SUM(COALESCE(completion_tokens, 0)) AS completion_tokens,
            SUM(COALESCE({column}, 0)) AS cached_tokens,
            SUM(tokens_estimated) AS estimated_requests,
            SUM(COALESCE(cost_usd, 0)) AS cost_usd,
            SUM({baseline}) AS baseline_cost_usd
        FROM requests
        WHERE endpoint = 'chat' AND ts >= ? AND ts < ?
        {f"GROUP BY {groups} ORDER BY {groups}" if groups else ""}"""
    lo, hi = q.bounds()
    data: list[dict[str, Any]] = []
    for row in conn.execute(sql, [*params, lo, min(hi, 1e18)]):
        entry = dict(row)
        if not entry["requests"]:
            continue  # no grouping and no rows: one row of NULLs
        entry["savings_usd"] = entry["baseline_cost_usd"] - entry["cost_usd"]
        data.append(_rounded(entry))
    return usage_page(q, data)


def _rounded(entry: dict[str, Any]) -> dict[str, Any]:
    for key in MONEY:
        entry[key] = round(entry[key] or 0.0, 9)
    return entry


def usage_page(q: UsageQuery, data: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's shape, with totals over `data`."""
    total = {key: sum(d[key] for d in data) for key in SUMS}
    return {
        "object": "turnout.usage",
        "since": q.since.isoformat() if q.since else None,
        "until": q.until.isoformat() if q.until else None,
        "group_by": list(q.group_by),
        "currency": "USD",
        "data": data,
        "total": _rounded(total),
    }


def empty_report(q: UsageQuery) -> dict[str, Any]:
    return usage_page(q, [])


def _report(settings: Settings, q: UsageQuery) -> dict[str, Any]:
    path = audit_path(settings)
    if not path.is_file():  # no request was recorded yet
        return empty_report(q)
    with closing(open_store(path)) as conn:
        return summarise(conn, settings, q)


async def usage_report(settings: Settings, query: str) -> dict[str, Any]:
    """The body of `GET /usage`; the audit store is read in a worker thread."""
    if not settings.telemetry.audit.enabled:
        raise PathNotFound("usage is computed from the audit log, which is off (`telemetry.audit.enabled: false`)")
    q = parse_query(query)
    return await asyncio.to_thread(_report, settings, q)


# --- the command ----------------------------------------------------------------------------------


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="YYYY-MM-DD", help="first UTC day (default: all the log keeps)")
    parser.add_argument("--until", metavar="YYYY-MM-DD", help="last UTC day, inclusive (default: today)")
    parser.add_argument(
        "--group-by",
        default=",".join(GROUPS),
        help="any of day,router,route,model, comma-separated, or `none` (default: all four)",
    )
    parser.add_argument("--audit", metavar="FILE", help="audit SQLite file (default: the config's)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from turnout.cli import resolve_config_path
    from turnout.config import load_config

    settings, _ = load_config(resolve_config_path(args.config))
    q = UsageQuery(
        since=parse_day(args.since, "--since") if args.since else None,
        until=parse_day(args.until, "--until") if args.until else None,
        group_by=parse_group_by(args.group_by),
    )
    path = Path(args.audit) if args.audit else audit_path(settings)
    with closing(open_store(path)) as conn:
        report = summarise(conn, settings, q)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    span = f"{report['since'] or 'start'} .. {report['until'] or 'now'} (UTC)"
    print(f"usage from {path}, {span}")
    labels = q.group_by or ("",)
    rows = [[*labels, "requests", "errors", "input tok", "cached", "output tok", "cost $", "baseline $", "savings $"]]
    for d in report["data"]:
        rows.append([*(str(d[g] if d[g] is not None else "-") for g in q.group_by), *_numbers(d)])
    rows.append(["total", *[""] * (len(labels) - 1), *_numbers(report["total"])])
    print(table(rows))
    total = report["total"]
    if total["estimated_requests"]:
        n, of = total["estimated_requests"], total["requests"]
        print(f"\n{n} of {of} requests have estimated token counts (the upstream reported no usage).")
    print("baseline: the same tokens on each router's most expensive route (docs/usage.md).")
    return 0


def _numbers(d: dict[str, Any]) -> list[str]:
    return [
        str(d["requests"]),
        str(d["errors"]),
        str(d["prompt_tokens"]),
        str(d["cached_tokens"]),
        str(d["completion_tokens"]),
        f"{d['cost_usd']:.6f}",
        f"{d['baseline_cost_usd']:.6f}",
        f"{d['savings_usd']:.6f}",
    ]
