"""`turnout replay AUDIT --config NEW`: re-decide logged requests under another config; show what changes.

Which logged chat requests can be re-decided:
  - with the prompt review log (`--review FILE`, default `review.sqlite3` next to AUDIT): every request
    whose text it kept. NEW's routers decide each one in process; nothing is forwarded (an `llm`
    strategy in NEW does ask its judge, as `turnout route` does).
  - without it: only decisions that needed no text: explicit ones (the client named the route: as
    `model`, `metadata.route` or `x-turnout-route`), and the fallback route taken when only `explicit`
    had run and abstained (a router whose only strategy reads hints). Decisions made from the text
    (rules, semantic, classifier, llm, the fallback after any of them, sticky) are counted as skipped,
    and the output says why. NEW's decision must need no text either: one that ran a text strategy on
    the missing text is skipped too.
Conversation memory is not replayed: a request that was sticky mid tool loop is decided from its text.

The report: route flips (old -> new, with counts), each route's share before and after, and the
estimated cost change, both sides priced with NEW's prices (each route's first target) over the logged
token counts, so the change is the routing's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from turnout.config import Settings
from turnout.errors import TurnoutError
from turnout.telemetry.audit import cached_tokens_column, day_start, open_store, parse_day
from turnout.types import RequestContext
from turnout.usage import table

EXPLICIT = ("explicit", "passthrough")  # decisions that need no text
HINTS = frozenset({"explicit"})  # strategies that read hints (model, metadata.route, header), never the text
NO_TEXT = "needs_text"
EMPTY = [{"role": "user", "content": ""}]


@dataclass(slots=True)
class Replayed:
    request_id: str
    old: str
    new: str | None = None
    strategy: str | None = None
    skipped: str | None = None  # why it was not re-decided
    error: str | None = None  # NEW refused it (an unknown route or model)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0


def text_free(strategy: str | None, trace: Iterable[dict[str, Any]]) -> bool:
    """Whether a decision needed no request text: an explicit one, or the fallback route after only
    hint-reading strategies ran (and abstained)."""
    if strategy in EXPLICIT:
        return True
    return strategy == "fallback" and all(step.get("strategy") in HINTS for step in trace)


def logged_requests(conn: sqlite3.Connection, lo: float, hi: float, limit: int) -> list[sqlite3.Row]:
    rows = conn.execute(
        f"""SELECT request_id, router, route, model, strategy, trace, prompt_tokens, completion_tokens,
                   {cached_tokens_column(conn)} AS cached_tokens, cost_usd
            FROM requests WHERE endpoint = 'chat' AND route IS NOT NULL AND ts >= ? AND ts < ?
            ORDER BY ts DESC LIMIT ?""",
        (lo, hi, limit),
    ).fetchall()
    return rows[::-1]


def review_texts(path: Path, ids: list[str]) -> dict[str, tuple[list[Any], dict[str, Any]]]:
    """request id -> (messages, params) from the review log."""
    out: dict[str, tuple[list[Any], dict[str, Any]]] = {}
    with closing(open_store(path, "review log")) as conn:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            sql = f"SELECT request_id, messages, params FROM prompts WHERE request_id IN ({','.join('?' * len(chunk))})"
            for row in conn.execute(sql, chunk):
                out[row["request_id"]] = (orjson.loads(row["messages"]), orjson.loads(row["params"]))
    return out


def client_model(row: sqlite3.Row) -> str:
    """The `model` the client asked for: the router, else the route it named (or the passed-through model)."""
    if row["router"]:
        return str(row["router"])
    return str(row["model"] if row["strategy"] == "passthrough" else row["route"])


async def redecide(settings: Settings, rows: list[sqlite3.Row], texts: dict[str, Any]) -> list[Replayed]:
    from turnout.gateway import Gateway  # the routing stack is loaded only to replay
    from turnout.upstreams import build_upstream

    upstreams = {n: build_upstream(n, c) for n, c in settings.upstreams.items()}  # only an `llm` judge calls one
    gateway = Gateway(settings, upstreams)
    out: list[Replayed] = []
    try:
        await gateway.start()
        for row in rows:
            r = Replayed(
                row["request_id"],
                row["route"],
                prompt_tokens=row["prompt_tokens"] or 0,
                completion_tokens=row["completion_tokens"] or 0,
                cached_tokens=row["cached_tokens"] or 0,
                cost_usd=row["cost_usd"] or 0.0,
            )
            out.append(r)
            text = texts.get(r.request_id)
            if text is None and not text_free(row["strategy"], orjson.loads(row["trace"] or "[]")):
                r.skipped = NO_TEXT
                continue
            messages, params = text or (EMPTY, {})
            model = client_model(row)
            hint = row["route"] if row["strategy"] == "explicit" and row["router"] else None
            body = {**params, "model": model, "messages": messages}
            ctx = RequestContext(r.request_id, body, model, False, hint, "the logged request" if hint else None)
            try:
                decision = await gateway.decide(ctx)
            except TurnoutError as exc:
                r.error = exc.code or type(exc).__name__
                continue
            if text is None and not text_free(decision.strategy, decision.trace):
                r.skipped = NO_TEXT  # NEW decides this one from the text, which is not there
                continue
            r.new, r.strategy = decision.route, decision.strategy
    finally:
        await gateway.close()
        for up in upstreams.values():
            await up.close()
    return out


def _price(settings: Settings, route: str, r: Replayed) -> float | None:
    cfg = settings.routes.get(route)
    if cfg is None:
        return None
    return settings.models[cfg.targets[0]].cost_usd(r.prompt_tokens, r.completion_tokens, r.cached_tokens)


def _shares(routes: Iterable[str]) -> dict[str, float]:
    counts = Counter(routes)
    total = sum(counts.values())
    return {route: round(n / total, 4) for route, n in sorted(counts.items())} if total else {}


def summarise(results: list[Replayed], settings: Settings, audit: Path, review: Path | None) -> dict[str, Any]:
    done = [r for r in results if r.new is not None]
    flips = Counter((r.old, r.new) for r in done if r.old != r.new)
    before = after = 0.0
    for r in done:
        assert r.new is not None
        old_cost = _price(settings, r.old, r)
        new_cost = _price(settings, r.new, r)
        before += r.cost_usd if old_cost is None else old_cost  # a route NEW lacks: its logged cost
        after += r.cost_usd if new_cost is None else new_cost
    skipped = Counter(r.skipped for r in results if r.skipped)
    note = None
    if skipped[NO_TEXT]:
        where = f"`{review}` has no text for them" if review else "there is no review log"
        note = (
            f"{skipped[NO_TEXT]} of {len(results)} requests were decided from their text and cannot be "
            f"replayed: {where}. Enable `telemetry.review_log` to keep request text for replay "
            "(only decisions that needed no text replay without it)."
        )
    return {
        "object": "turnout.replay",
        "audit": str(audit),
        "review": str(review) if review else None,
        "logged": len(results),
        "replayed": len(done),
        "skipped": dict(skipped),
        "errors": dict(Counter(r.error for r in results if r.error)),
        "flipped": sum(flips.values()),
        "flips": [{"from": a, "to": b, "requests": n} for (a, b), n in flips.most_common()],
        "shares": {"before": _shares(r.old for r in done), "after": _shares(r.new or "" for r in done)},
        "cost": {
            "before_usd": round(before, 9),
            "after_usd": round(after, 9),
            "change_usd": round(after - before, 9),
            "change_pct": round(100 * (after - before) / before, 2) if before else None,
        },
        "changes": [
            {"request_id": r.request_id, "from": r.old, "to": r.new, "strategy": r.strategy}
            for r in done
            if r.old != r.new
        ],
        "note": note,
    }


# --- the command ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audit", metavar="AUDIT", help="the audit log's SQLite file")
    parser.add_argument(
        "--review", metavar="FILE", help="the prompt review log (default: review.sqlite3 next to AUDIT, when it exists)"
    )
    parser.add_argument("--since", metavar="YYYY-MM-DD", help="first UTC day to replay")
    parser.add_argument("--until", metavar="YYYY-MM-DD", help="last UTC day to replay, inclusive")
    parser.add_argument("--limit", type=int, default=100_000, help="replay at most the N latest requests")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from turnout.cli import resolve_config_path
    from turnout.config import load_config

    settings, source = load_config(resolve_config_path(args.config))
    audit = Path(args.audit)
    lo = day_start(parse_day(args.since, "--since")) if args.since else 0.0
    hi = day_start(parse_day(args.until, "--until") + timedelta(days=1)) if args.until else 1e18
    with closing(open_store(audit, fix="name the audit log's SQLite file (`telemetry.audit.sqlite_path`)")) as conn:
        rows = logged_requests(conn, lo, hi, args.limit)
    review: Path | None = Path(args.review) if args.review else audit.with_name("review.sqlite3")
    if review is not None and not review.is_file():
        if args.review:
            raise TurnoutError(f"no review log at `{review}`")
        review = None
    texts = review_texts(review, [r["request_id"] for r in rows]) if review else {}
    report = summarise(asyncio.run(redecide(settings, rows, texts)), settings, audit, review)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    print_report(report, source)
    return 0


def print_report(rep: dict[str, Any], source: str) -> None:
    print(f"replay of {rep['audit']} under {source}")
    print(f"review log: {rep['review'] or 'none (only decisions that needed no text can be replayed)'}")
    print(f"replayed {rep['replayed']} of {rep['logged']} logged requests")
    if rep["note"]:
        print(f"note: {rep['note']}")
    for code, n in rep["errors"].items():
        print(f"refused by the new config: {n} ({code})")
    if not rep["replayed"]:
        return
    pct = 100 * rep["flipped"] / rep["replayed"]
    print(f"\nroute flips: {rep['flipped']} ({pct:.1f}%)")
    for f in rep["flips"]:
        print(f"  {f['from']} -> {f['to']}: {f['requests']}")
    before, after = rep["shares"]["before"], rep["shares"]["after"]
    rows = [["route", "before", "after"]]
    for route in sorted(set(before) | set(after)):
        rows.append([route, f"{100 * before.get(route, 0):.1f}%", f"{100 * after.get(route, 0):.1f}%"])
    print("\nshare per route\n" + table(rows))
    c = rep["cost"]
    change = "" if c["change_pct"] is None else f" ({c['change_pct']:+.1f}%)"
    print(f"\nest. cost (new config's prices): ${c['before_usd']:.6f} -> ${c['after_usd']:.6f}{change}")
