"""`turnout eval`: routing quality on labelled JSONL, and the data and decision plumbing `calibrate` shares.

Data is one case a line: `{"messages": [...]}` or `{"text": "..."}`, with `"label"` (the expected route)
and/or `"outcomes"` (quality per route, e.g. `{"lite": 0, "deep": 1}`), and an optional `"lang"`.
Decisions come from the same gateway `turnout serve` builds; no model is called (an `llm` strategy's judge
excepted). The report: accuracy overall, per label and per language, a confusion matrix, decisions per
strategy, decision latency; for outcome cases, quality against share of traffic with the all-cheap and
all-strong baselines; with `--sweep`, the cost/quality curve of a per-case strong score, with APGR and
CPT(50%) as RouteLLM defines them, against a random router.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from turnout.cli import resolve_config_path
from turnout.config import RouterConfig, Settings, load_config
from turnout.errors import TurnoutError
from turnout.features import Features
from turnout.gateway import Gateway
from turnout.types import Decision, RequestContext
from turnout.upstreams import build_upstream

SCORED_STRATEGIES = ("classifier", "semantic")  # strategies whose proposals carry per-route scores


class EvalError(TurnoutError):
    """Bad data or arguments for `turnout eval` or `turnout calibrate`; the command exits 2."""


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    line: int
    messages: list[dict[str, Any]]
    label: str | None = None
    outcomes: dict[str, float] | None = None
    lang: str = "und"


def _names(items: Sequence[str]) -> str:
    return ", ".join(f"`{i}`" for i in items)


def parse_case(raw: bytes | str, line: int, routes: Sequence[str], router: str) -> Case:
    """One JSONL line; EvalError names the line and what to fix."""
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EvalError(f"line {line}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise EvalError(f"line {line}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
            raise EvalError(f"line {line}: `messages` must be a non-empty list of message objects")
        if not all(isinstance(m.get("role"), str) for m in messages):
            raise EvalError(f"line {line}: every message needs a `role`")
    elif "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise EvalError(f"line {line}: `text` must be a non-empty string")
        messages = [{"role": "user", "content": row["text"]}]
    else:
        raise EvalError(f"line {line}: needs `messages` (chat messages) or `text`")
    label, outcomes = row.get("label"), row.get("outcomes")
    if label is None and outcomes is None:
        raise EvalError(f"line {line}: needs `label` (the expected route) or `outcomes` (quality per route)")
    if label is not None and (not isinstance(label, str) or label not in routes):
        raise EvalError(f"line {line}: label {label!r} is not a route of router `{router}` ({_names(routes)})")
    if outcomes is not None:
        outcomes = _outcomes(outcomes, line, routes, router)
    lang = row.get("lang")
    if lang is not None and (not isinstance(lang, str) or not lang):
        raise EvalError(f"line {line}: `lang` must be a language code such as `en` or `zh`")
    if lang is None:
        lang = Features({"messages": messages}).language
    return Case(line, messages, label, outcomes, lang)


def _outcomes(value: Any, line: int, routes: Sequence[str], router: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise EvalError(f'line {line}: `outcomes` must map routes to numbers, e.g. {{"lite": 0, "deep": 1}}')
    unknown = [k for k in value if k not in routes]
    if unknown:
        raise EvalError(f"line {line}: outcomes for {_names(unknown)}, not routes of router `{router}`")
    missing = [r for r in routes if r not in value]
    if missing:
        raise EvalError(f"line {line}: `outcomes` needs every route of router `{router}`; missing {_names(missing)}")
    out: dict[str, float] = {}
    for k, v in value.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise EvalError(f"line {line}: outcome for `{k}` must be a number, got {v!r}")
        out[k] = float(v)
    return out


def read_cases(
    path: str | os.PathLike[str], routes: Sequence[str], router: str, limit: int | None = None
) -> list[Case]:
    """Every case in a JSONL file (blank lines skipped), at most `limit`."""
    p = Path(path)
    cases: list[Case] = []
    try:
        with p.open("rb") as f:
            for n, raw in enumerate(f, 1):
                if limit is not None and len(cases) >= limit:
                    break
                if raw.strip():
                    cases.append(parse_case(raw, n, routes, router))
    except OSError as exc:
        raise EvalError(f"cannot read data file `{p}`: {exc.strerror or exc}") from None
    if not cases:
        raise EvalError(f"data file `{p}` has no cases; write one JSON object a line")
    return cases


def pick_router(settings: Settings, name: str | None) -> str:
    if not settings.routers:
        raise EvalError("the config defines no routers; add one under `routers`")
    if name is None:
        return next(iter(settings.routers))
    if name not in settings.routers:
        what = "a route, not a router" if name in settings.routes else "not a router"
        raise EvalError(f"`{name}` is {what}; use one of: {_names(list(settings.routers))}")
    return name


# --- decisions ----------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar (`eval [#####-----] 120/300 2.1 s`), redrawn at most ten times a second."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.total, self.label = total, label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self._start = self._drawn = time.monotonic()

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= 0.1 or self.done == self.total):
            self._drawn = now
            filled = 30 * self.done // max(1, self.total)
            bar = "#" * filled + "-" * (30 - filled)
            line = f"\r{self.label} [{bar}] {self.done}/{self.total} {now - self._start:.1f} s"
            self.stream.write(line)
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


@asynccontextmanager
async def open_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """A started gateway, as `turnout serve` builds it; its upstreams are built but never called for decisions."""
    upstreams = {n: build_upstream(n, c) for n, c in settings.upstreams.items()}
    gateway = Gateway(settings, upstreams)
    try:
        await gateway.start()
        yield gateway
    finally:
        await gateway.close()
        for upstream in upstreams.values():
            await upstream.close()


async def decide_cases(gateway: Gateway, router: str, cases: Sequence[Case], exhaustive: bool = False,
                       progress: Progress | None = None) -> list[Decision]:  # fmt: skip
    """One decision per case, in order. `exhaustive` runs every strategy and records each proposal in the
    trace (the decision is the same); serving latency is only measured without it."""
    out: list[Decision] = []
    for case in cases:
        ctx = RequestContext(f"eval-{case.line}", {"model": router, "messages": case.messages}, router, False)
        if exhaustive:
            out.append(await gateway.routers[router].decide(ctx, exhaustive=True))
        else:
            out.append(await gateway.decide(ctx))
        if progress is not None:
            progress.advance()
    if progress is not None:
        progress.close()
    return out


async def collect(settings: Settings, router: str, cases: Sequence[Case], exhaustive: bool = False,
                  progress: Progress | None = None) -> list[Decision]:  # fmt: skip
    async with open_gateway(settings) as gateway:
        return await decide_cases(gateway, router, cases, exhaustive, progress)


# --- the report ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of values at or below it."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(p / 100 * len(ranked)) - 1)]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def accuracy_report(cases: Sequence[Case], decisions: Sequence[Decision], routes: Sequence[str]) -> dict[str, Any]:
    """Accuracy overall, per label and per language, the confusion matrix and the misrouted cases."""
    pairs = [(c, d) for c, d in zip(cases, decisions, strict=True) if c.label is not None]
    correct = sum(c.label == d.route for c, d in pairs)
    by_label: dict[str, list[int]] = {r: [0, 0] for r in routes if any(c.label == r for c, _ in pairs)}
    by_lang: dict[str, list[int]] = {}
    confusion = {r: dict.fromkeys(routes, 0) for r in routes}
    errors = []
    for c, d in pairs:
        assert c.label is not None
        hit = int(c.label == d.route)
        by_label[c.label][0] += 1
        by_label[c.label][1] += hit
        lang = by_lang.setdefault(c.lang, [0, 0])
        lang[0] += 1
        lang[1] += hit
        confusion[c.label][d.route] = confusion[c.label].get(d.route, 0) + 1
        if not hit:
            errors.append({"line": c.line, "expected": c.label, "decided": d.route, "strategy": d.strategy,
                           "confidence": d.confidence})  # fmt: skip
    return {
        "labelled": len(pairs),
        "correct": correct,
        "accuracy": _ratio(correct, len(pairs)),
        "per_label": {k: {"n": n, "correct": ok, "accuracy": ok / n} for k, (n, ok) in by_label.items()},
        "per_language": {k: {"n": n, "correct": ok, "accuracy": ok / n} for k, (n, ok) in sorted(by_lang.items())},
        "confusion": confusion,  # expected -> decided -> count
        "misrouted": errors,
    }


def strong_score(decision: Decision, strategy: str, strong: str, cheap: str) -> float | None:
    """The sweep's score for one case: the strong route's score minus the cheap route's, from `strategy`'s
    proposal in the trace (a route it did not score counts 0); None when that strategy made no proposal."""
    for entry in decision.trace:
        if entry.get("strategy") == strategy and entry.get("scores"):
            scores = entry["scores"]
            if strong not in scores and cheap not in scores:
                return None
            return round(float(scores.get(strong, 0.0)) - float(scores.get(cheap, 0.0)), 6)
    return None


def _interp(x: float, x0: float, x1: float, y0: float, y1: float) -> float:
    return x0 if y1 == y0 else x0 + (x - y0) / (y1 - y0) * (x1 - x0)


def sweep_curve(scores: Sequence[float | None], outcomes: Sequence[dict[str, float]], strong: str,
                cheap: str) -> dict[str, Any]:  # fmt: skip
    """The cost/quality curve of `strong if score >= t else cheap`, t swept from +inf down through every score.

    Each point is (share of strong calls, mean quality); cases without a score go strong last. PGR is the
    share of the cheap-to-strong quality gap recovered; APGR its integral over strong share 0..1 (trapezoids:
    any point between two operating points is reachable by mixing them); CPT(50%) the least strong share
    that reaches PGR 0.5 (linear between points). A random router's expectations are exactly APGR 0.5 and
    CPT(50%) 0.5, so those are its baseline.
    """
    n = len(outcomes)
    q_cheap = sum(o[cheap] for o in outcomes) / n
    q_strong = sum(o[strong] for o in outcomes) / n
    gap = q_strong - q_cheap
    ranked = sorted(range(n), key=lambda i: (scores[i] is None, -(scores[i] or 0.0)))
    total = q_cheap * n
    points: list[dict[str, Any]] = [{"threshold": None, "strong_share": 0.0, "quality": q_cheap}]
    i = 0
    while i < n:
        s = scores[ranked[i]]
        while i < n and scores[ranked[i]] == s:
            o = outcomes[ranked[i]]
            total += o[strong] - o[cheap]
            i += 1
        points.append({"threshold": s, "strong_share": i / n, "quality": total / n})
    for p in points:
        p["pgr"] = (p["quality"] - q_cheap) / gap if gap > 0 else None
    out: dict[str, Any] = {"strong": strong, "cheap": cheap, "cases": n, "unscored": sum(s is None for s in scores),
                           "quality_cheap": q_cheap, "quality_strong": q_strong, "points": points,
                           "apgr": None, "cpt50": None, "random": {"apgr": 0.5, "cpt50": 0.5}}  # fmt: skip
    if gap <= 0:
        out["note"] = f"`{strong}` is not better than `{cheap}` on these cases; PGR is undefined"
        return out
    xs, ys = [p["strong_share"] for p in points], [p["pgr"] for p in points]
    out["apgr"] = sum((xs[k + 1] - xs[k]) * (ys[k] + ys[k + 1]) / 2 for k in range(len(xs) - 1))
    for k in range(len(xs)):
        if ys[k] >= 0.5:
            out["cpt50"] = xs[0] if k == 0 else _interp(0.5, xs[k - 1], xs[k], ys[k - 1], ys[k])
            break
    return out


def quality_at(points: Sequence[dict[str, Any]], share: float) -> float:
    """Quality on the curve at a share of strong calls, linear between operating points."""
    for a, b in itertools.pairwise(points):
        if b["strong_share"] >= share:
            width = b["strong_share"] - a["strong_share"]
            t = (share - a["strong_share"]) / width if width else 1.0
            return float(a["quality"] + t * (b["quality"] - a["quality"]))
    return float(points[-1]["quality"])


def quality_report(cases: Sequence[Case], decisions: Sequence[Decision], routes: Sequence[str], strong: str,
                   cheap: str) -> dict[str, Any]:  # fmt: skip
    """Mean outcome of the chosen route against share of traffic per route, with all-one-route baselines."""
    rows = [(c.outcomes, d.route) for c, d in zip(cases, decisions, strict=True) if c.outcomes is not None]
    n = len(rows)
    shares = Counter(route for _, route in rows)
    quality = sum(o[r] for o, r in rows) / n
    q_cheap, q_strong = (sum(o[x] for o, _ in rows) / n for x in (cheap, strong))
    pgr = (quality - q_cheap) / (q_strong - q_cheap) if q_strong > q_cheap else None
    router = {"quality": quality, "shares": {r: shares[r] / n for r in routes}, "pgr": pgr}
    baselines = {f"all-{r}": {"quality": sum(o[r] for o, _ in rows) / n, "shares": {x: float(x == r) for x in routes}}
                 for r in dict.fromkeys([cheap, strong, *routes])}  # fmt: skip
    return {"cases": n, "strong": strong, "cheap": cheap, "router": router, "baselines": baselines}


def build_report(cases: Sequence[Case], decisions: Sequence[Decision], config: RouterConfig, *,
                 strong: str | None = None, cheap: str | None = None, sweep: str | None = None,
                 exhaustive: bool = False) -> dict[str, Any]:  # fmt: skip
    """The whole `turnout eval` report as one JSON-ready dict. `sweep` names the strategy that scores."""
    routes = list(config.routes)
    strategies = Counter(d.strategy for d in decisions)
    latencies = [d.elapsed_ms for d in decisions]
    report: dict[str, Any] = {
        "cases": len(cases),
        **accuracy_report(cases, decisions, routes),
        "strategies": {s: {"n": k, "share": k / len(cases)} for s, k in strategies.most_common()},
        "route_shares": {r: sum(d.route == r for d in decisions) / len(cases) for r in routes},
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "mean": sum(latencies) / len(latencies),
            "exhaustive": exhaustive,
        },
        "quality": None,
        "sweep": None,
    }
    with_outcomes = [(c, d) for c, d in zip(cases, decisions, strict=True) if c.outcomes is not None]
    if with_outcomes and strong is not None and cheap is not None:
        report["quality"] = quality_report(cases, decisions, routes, strong, cheap)
        if sweep is not None:
            scores = [strong_score(d, sweep, strong, cheap) for _, d in with_outcomes]
            outcomes = [c.outcomes for c, _ in with_outcomes if c.outcomes is not None]
            report["sweep"] = {"score": f"{sweep}: score of `{strong}` minus score of `{cheap}`",
                               **sweep_curve(scores, outcomes, strong, cheap)}  # fmt: skip
    return report


# --- text ---------------------------------------------------------------------------------------


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render(report: dict[str, Any]) -> str:
    r = report
    out = [f"router `{r['router']}` on {r['data']}: {r['cases']} cases, {r['labelled']} labelled"]
    if r["labelled"]:
        out += ["", f"accuracy  {_f(r['accuracy'])}  ({r['correct']}/{r['labelled']})", ""]
        for title, key in (("label", "per_label"), ("lang", "per_language")):
            rows = [[title, "n", "correct", "accuracy"]]
            rows += [[k, str(v["n"]), str(v["correct"]), _f(v["accuracy"])] for k, v in r[key].items()]
            out += [table(rows), ""]
        routes = list(r["confusion"])
        rows = [["expected \\ decided", *routes]]
        rows += [[e, *(str(r["confusion"][e][d]) for d in routes)] for e in routes]
        out += ["confusion (rows: expected route, columns: decided route)", table(rows)]
        if r["misrouted"]:
            out.append("misrouted:")
        for m in r["misrouted"][:10]:
            conf = "" if m["confidence"] is None else f", {m['confidence']:.3f}"
            out.append(
                f"  line {m['line']}: expected `{m['expected']}`, decided `{m['decided']}` ({m['strategy']}{conf})"
            )
        if len(r["misrouted"]) > 10:
            out.append(f"  ... and {len(r['misrouted']) - 10} more (--json lists them all)")
    rows = [["strategy", "decisions", "share"]]
    rows += [[s, str(v["n"]), _pct(v["share"])] for s, v in r["strategies"].items()]
    lat = r["latency_ms"]
    mode = " (exhaustive: every strategy ran; run without --sweep for serving latency)" if lat["exhaustive"] else ""
    out += ["", table(rows), "", f"decision latency  p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms{mode}"]
    if r["quality"] is not None:
        out += ["", *_render_quality(r["quality"])]
    if r["sweep"] is not None:
        out += ["", *_render_sweep(r["sweep"])]
    return "\n".join(out)


def _render_quality(q: dict[str, Any]) -> list[str]:
    routes = list(q["router"]["shares"])
    rows = [["policy", "quality", *(f"to {x}" for x in routes)]]
    for name, v in [("router", q["router"]), *q["baselines"].items()]:
        rows.append([name, _f(v["quality"]), *(_pct(v["shares"][x]) for x in routes)])
    pgr = q["router"]["pgr"]
    lines = [f"quality: mean outcome of the chosen route ({q['cases']} cases; strong `{q['strong']}`, "
             f"cheap `{q['cheap']}`)", table(rows)]  # fmt: skip
    if pgr is not None:
        share = q["router"]["shares"][q["strong"]]
        lines.append(f"the router recovers {_pct(pgr)} of the quality gap with {_pct(share)} strong calls")
    return lines


def _render_sweep(s: dict[str, Any]) -> list[str]:
    lines = [f"cost/quality sweep: strong iff {s['score']} >= t ({s['cases']} cases, {s['unscored']} unscored)"]
    if s["apgr"] is None:
        return [*lines, s["note"]]
    rows = [["strong calls", "quality", "PGR"]]
    gap = s["quality_strong"] - s["quality_cheap"]
    for k in range(11):  # the curve at every 10% of strong calls
        q = quality_at(s["points"], k / 10)
        rows.append([_pct(k / 10), _f(q), _f((q - s["quality_cheap"]) / gap, 2)])
    lines += [table(rows), f"APGR {_f(s['apgr'])} (random router {_f(s['random']['apgr'])})   "
              f"CPT(50%) {_pct(s['cpt50'])} (random router {_pct(s['random']['cpt50'])})"]  # fmt: skip
    return lines


# --- the command --------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="JSONL file: one case a line (see docs/evaluation.md)")
    parser.add_argument("--router", help="router to evaluate (default: the first router)")
    parser.add_argument("--limit", type=int, metavar="N", help="read only the first N cases")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a terminal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--sweep", action="store_true",
                        help="cost/quality curve, APGR and CPT(50%%) on cases with `outcomes`")  # fmt: skip
    parser.add_argument("--strong", metavar="ROUTE", help="the strong route (default: the non-fallback one of two)")
    parser.add_argument("--cheap", metavar="ROUTE", help="the cheap route (default: the router's fallback)")


def pick_pair(config: RouterConfig, router: str, strong: str | None, cheap: str | None) -> tuple[str, str]:
    """The (strong, cheap) routes: as named, else the fallback is cheap and the other of two routes strong."""
    cheap = cheap or config.fallback
    if strong is None:
        others = [r for r in config.routes if r != cheap]
        if len(others) != 1:
            raise EvalError(f"router `{router}` has {len(config.routes)} routes; name the two to compare with "
                            "`--strong ROUTE --cheap ROUTE`")  # fmt: skip
        strong = others[0]
    for flag, name in (("--strong", strong), ("--cheap", cheap)):
        if name not in config.routes:
            raise EvalError(f"{flag}: `{name}` is not a route of router `{router}` ({_names(config.routes)})")
    if strong == cheap:
        raise EvalError(f"`--strong` and `--cheap` are both `{strong}`; name two different routes")
    return strong, cheap


def guarded(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command body; bad data or arguments print one line and exit 2 (other errors: `cli.main`)."""
    try:
        return body(args)
    except EvalError as exc:
        print(f"turnout: {exc.message}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    return guarded(_run, args)


def _run(args: argparse.Namespace) -> int:
    settings, source = load_config(resolve_config_path(args.config))
    router = pick_router(settings, args.router)
    config = settings.routers[router]
    cases = read_cases(args.data, config.routes, router, args.limit)
    has_outcomes = any(c.outcomes is not None for c in cases)
    strong = cheap = sweep = None
    if has_outcomes or args.sweep:
        strong, cheap = pick_pair(config, router, args.strong, args.cheap)
    if args.sweep:
        if not has_outcomes:
            raise EvalError("`--sweep` needs cases with `outcomes` (quality per route)")
        sweep = next((s for s in config.strategies if s in SCORED_STRATEGIES), None)
        if sweep is None:
            raise EvalError(f"`--sweep` needs a `semantic` or `classifier` strategy on router `{router}`")
    progress = Progress(len(cases), "eval", enabled=True if args.progress else None)
    decisions = asyncio.run(collect(settings, router, cases, exhaustive=args.sweep, progress=progress))
    report = {"router": router, "config": source, "data": str(args.data)}
    report |= build_report(cases, decisions, config, strong=strong, cheap=cheap, sweep=sweep, exhaustive=args.sweep)
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print(render(report))
    return 0
