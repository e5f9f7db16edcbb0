"""`turnout calibrate`: thresholds and margins chosen on labelled JSONL, written as a config patch.

1. Every case is decided once, exhaustively: each strategy's proposal (route, confidence, scores) is
   in the trace, so any policy can be replayed offline without deciding again.
2. Cases are split, seeded, into a fit set and a held-out set; identical conversations stay together.
3. Coordinate search over the settings, each tried at every value where a decision can change (a
   midpoint between neighbouring confidences, or margins, seen in the fit traces): the semantic
   threshold and margin, per-route thresholds, the classifier's threshold and margin (category mode).
   The objective is fit accuracy; with target shares, first the overshoot of the targets, then accuracy.
   A setting keeps its value when that is among the best; otherwise it takes the middle of the widest
   run of best values.
4. Before and after on both sets. The patch holds only the changed keys; it is refused when the
   held-out set gets worse.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import yaml

from turnout.cli import resolve_config_path
from turnout.config import load_config
from turnout.evaluate import (
    Case,
    EvalError,
    Progress,
    add_common_arguments,
    decide_cases,
    guarded,
    open_gateway,
    pick_router,
    read_cases,
    table,
)
from turnout.router import Router
from turnout.types import Decision

Key = tuple[str, ...]  # a config path: ("routers", "auto", "semantic", "threshold")
Settings = dict[Key, float | None]
MAX_CANDIDATES = 256


def dotted(key: Key) -> str:
    return ".".join(key)


# --- the traces, as arrays ------------------------------------------------------------------------


@dataclass
class Traces:
    """Each case's proposals, one column per strategy of the router, for fast replay of any policy."""

    router: str
    routes: tuple[str, ...]
    strategies: tuple[str, ...]
    fallback: int
    route: np.ndarray  # int [cases, strategies]: the proposed route's index, -1 when none
    confidence: np.ndarray  # float: nan when none
    gap: np.ndarray  # float: best minus second-best score; +inf with fewer than two scores
    decided: np.ndarray  # bool: the recorded verdict, for strategies calibrate leaves alone
    recorded: np.ndarray  # int [cases]: the route each case was actually given

    @classmethod
    def of(cls, router: Router, decisions: Sequence[Decision]) -> Traces:
        routes = router.routes
        strategies = tuple(s.name for s in router.strategies)
        n, k = len(decisions), len(strategies)
        route = np.full((n, k), -1, dtype=np.int64)
        confidence = np.full((n, k), np.nan)
        gap = np.full((n, k), np.inf)
        decided = np.zeros((n, k), dtype=bool)
        for i, d in enumerate(decisions):
            if len(d.trace) != k:
                raise EvalError(f"case {i + 1}: the trace has {len(d.trace)} entries for {k} strategies; "
                                "decide exhaustively to calibrate")  # fmt: skip
            for j, entry in enumerate(d.trace):
                if "route" not in entry:
                    continue  # abstained or failed
                route[i, j] = routes.index(entry["route"])
                if entry.get("confidence") is not None:
                    confidence[i, j] = entry["confidence"]
                ranked = sorted(entry.get("scores", {}).values(), reverse=True)
                if len(ranked) > 1:
                    gap[i, j] = ranked[0] - ranked[1]
                decided[i, j] = entry["verdict"] == "decided"
        recorded = np.array([routes.index(d.route) for d in decisions], dtype=np.int64)
        return cls(router.name, routes, strategies, routes.index(router.fallback), route, confidence, gap,
                   decided, recorded)  # fmt: skip

    def column(self, strategy: str) -> int | None:
        return self.strategies.index(strategy) if strategy in self.strategies else None


def current_settings(router: Router) -> Settings:
    """The settings calibrate may change, as the router holds them now."""
    c = router.config
    out: Settings = {}
    if any(s.name == "semantic" for s in router.strategies):
        out[("routers", router.name, "semantic", "threshold")] = c.semantic.threshold
        out[("routers", router.name, "semantic", "margin")] = c.semantic.margin
        for r in router.routes:
            out[("routes", r, "threshold")] = router.route_thresholds.get(r)
    if c.classifier is not None and any(s.name == "classifier" for s in router.strategies):
        threshold, margin = router.policy("classifier", router.fallback)
        if threshold is not None:  # cost mode applies its threshold itself; nothing to replay here
            out[("routers", router.name, "classifier", "threshold")] = threshold
            out[("routers", router.name, "classifier", "margin")] = margin or 0.0
    return out


def replay(t: Traces, settings: Settings) -> np.ndarray:
    """The route index each case gets under `settings`: the first strategy whose proposal passes, else fallback."""
    decided = t.decided.copy()
    r = t.router
    sem = t.column("semantic")
    if sem is not None and ("routers", r, "semantic", "threshold") in settings:
        base = settings[("routers", r, "semantic", "threshold")]
        per_route = [settings.get(("routes", x, "threshold")) for x in t.routes]
        thresholds = np.array([base if v is None else v for v in per_route] + [math.inf], dtype=float)
        margin = settings[("routers", r, "semantic", "margin")]
        decided[:, sem] = _passes(t, sem, thresholds[t.route[:, sem]], margin)
    cls = t.column("classifier")
    if cls is not None and ("routers", r, "classifier", "threshold") in settings:
        threshold = settings[("routers", r, "classifier", "threshold")]
        decided[:, cls] = _passes(t, cls, threshold, settings[("routers", r, "classifier", "margin")])
    first = decided.argmax(axis=1)
    chosen = t.route[np.arange(len(first)), first]
    out: np.ndarray = np.where(decided.any(axis=1), chosen, t.fallback)
    return out


def _passes(t: Traces, col: int, threshold: Any, margin: float | None) -> np.ndarray:
    """Router._verdict, vectorised: a proposal, at or above its threshold, leading by at least the margin."""
    with np.errstate(invalid="ignore"):
        ok: np.ndarray = (t.route[:, col] >= 0) & (t.confidence[:, col] >= threshold)
    if margin is not None:
        ok &= t.gap[:, col] >= margin
    return ok


# --- the search -----------------------------------------------------------------------------------


def nice(lo: float, hi: float) -> float:
    """The shortest decimal in (lo, hi], near the middle: a threshold that passes hi and not lo."""
    mid = (lo + hi) / 2
    for digits in range(1, 8):
        v = round(mid, digits)
        if lo < v <= hi:
            return v
    return hi


def cuts(values: np.ndarray, low: float | None = None, high: float | None = None) -> list[float]:
    """Every threshold between neighbouring observed values, plus one below and one above them all."""
    seen = np.unique(values[np.isfinite(values)])
    if not len(seen):
        return []
    if len(seen) > MAX_CANDIDATES:  # large sets: quantiles of what was seen
        seen = np.unique(seen[np.linspace(0, len(seen) - 1, MAX_CANDIDATES).round().astype(int)])
    edges = [float(seen[0]) - 0.05, *map(float, seen), float(seen[-1]) + 0.05]
    out = [nice(a, b) for a, b in itertools.pairwise(edges)]
    if low is not None:
        out = [max(low, v) for v in out]
    if high is not None:
        out = [min(high, v) for v in out]
    return sorted(set(out))


def candidates(t: Traces, key: Key, rows: np.ndarray) -> Sequence[float | None]:
    col = t.column(key[2] if key[0] == "routers" else "semantic")
    assert col is not None
    proposed = t.route[rows, col] >= 0
    conf, gap = t.confidence[rows, col][proposed], t.gap[rows, col][proposed]
    if key[0] == "routes":
        mine = t.route[rows, col][proposed] == t.routes.index(key[1])
        return [None, *cuts(conf[mine])]
    if key[-1] == "margin":
        return cuts(gap, low=0.0)
    return cuts(conf, low=0.0, high=1.0) if key[2] == "classifier" else cuts(conf)


@dataclass
class Score:
    correct: int
    n: int
    shares: dict[str, float]
    overshoot: float  # how far route shares exceed their targets, summed

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "correct": self.correct, "accuracy": self.accuracy, "shares": self.shares,
                "overshoot": self.overshoot}  # fmt: skip


def score(t: Traces, chosen: np.ndarray, labels: np.ndarray, targets: dict[str, float]) -> Score:
    n = len(labels)
    shares = {r: float((chosen == i).mean()) if n else 0.0 for i, r in enumerate(t.routes)}
    over = sum(max(0.0, shares[r] - cap) for r, cap in targets.items())
    return Score(int((chosen == labels).sum()), n, shares, round(over, 9))


def search(t: Traces, labels: np.ndarray, rows: np.ndarray, start: Settings,
           targets: dict[str, float]) -> Settings:  # fmt: skip
    """Coordinate search on the rows given: each setting in turn, until none moves."""
    current = dict(start)
    keys = list(start)
    options = {k: candidates(t, k, rows) for k in keys}

    def objective(s: Settings) -> tuple[float, int]:
        sc = score(t, replay(t, s)[rows], labels[rows], targets)
        return sc.overshoot, -sc.correct

    for _ in range(20):
        moved = False
        for key in keys:
            values = sorted({*options[key], current[key]}, key=lambda v: (v is not None, v or 0.0))
            results = [objective({**current, key: v}) for v in values]
            best = min(results)
            if objective(current) == best:
                continue
            winners = [i for i, r in enumerate(results) if r == best]
            current[key] = values[_middle_of_widest_run(winners)]
            moved = True
        if not moved:
            break
    return current


def _middle_of_widest_run(indices: list[int]) -> int:
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    widest = max(runs, key=len)
    return widest[(len(widest) - 1) // 2]


# --- one calibration ------------------------------------------------------------------------------


def split(cases: Sequence[Case], holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit, held-out) indices; cases with identical messages land on the same side."""
    groups: dict[bytes, list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault(orjson.dumps(c.messages, option=orjson.OPT_SORT_KEYS), []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    want = round(holdout * len(cases))
    if holdout > 0 and len(keys) > 1:
        want = max(1, want)
    held: list[int] = []
    for k in keys:
        if len(held) >= want or len(held) + len(groups[k]) >= len(cases):
            break
        held += groups[k]
    held_set = set(held)
    fit = [i for i in range(len(cases)) if i not in held_set]
    return np.array(fit, dtype=np.int64), np.array(sorted(held), dtype=np.int64)


@dataclass
class Calibration:
    router: str
    fit: np.ndarray
    held: np.ndarray
    before: Settings
    after: Settings
    scores: dict[str, dict[str, Score]]  # "before"/"after" -> "fit"/"holdout" -> score
    targets: dict[str, float]
    replay_mismatches: int
    shared_routes: list[str] = field(default_factory=list)  # changed route thresholds other routers read

    @property
    def changed(self) -> list[Key]:
        return [k for k in self.before if self.after[k] != self.before[k]]

    @property
    def patch(self) -> dict[str, Any]:
        """The changed keys as a nested mapping, ready to merge into the config file."""
        out: dict[str, Any] = {}
        for key in self.changed:
            node = out
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = self.after[key]
        return out

    @property
    def refusal(self) -> str | None:
        """Why the patch must not be applied: the held-out set got worse (None when it did not)."""
        if not len(self.held) or not self.changed:
            return None
        b, a = self.scores["before"]["holdout"], self.scores["after"]["holdout"]
        if a.overshoot > b.overshoot:
            return (f"held-out share overshoots the targets more after ({a.overshoot:.3f}) than before "
                    f"({b.overshoot:.3f})")  # fmt: skip
        if a.overshoot == b.overshoot and a.correct < b.correct:
            return f"held-out accuracy would drop from {b.accuracy:.3f} to {a.accuracy:.3f}"
        return None


def calibrate(router: Router, cases: Sequence[Case], decisions: Sequence[Decision], *, holdout: float = 0.3,
              seed: int = 0, targets: dict[str, float] | None = None) -> Calibration:  # fmt: skip
    """Choose the settings on a fit set of labelled cases decided exhaustively, and score them on both sets."""
    targets = targets or {}
    t = Traces.of(router, decisions)
    labels = np.array([router.routes.index(c.label) if c.label is not None else -1 for c in cases], dtype=np.int64)
    before = current_settings(router)
    if not before:
        raise EvalError(f"router `{router.name}` has nothing to calibrate: it needs a `semantic` strategy or a "
                        "`classifier` in category mode")  # fmt: skip
    fit, held = split(cases, holdout, seed)
    mismatches = int((replay(t, before) != t.recorded).sum())
    after = search(t, labels, fit, before, targets)
    parts = (("fit", fit), ("holdout", held))
    scores = {
        name: {part: score(t, replay(t, s)[rows], labels[rows], targets) for part, rows in parts}
        for name, s in (("before", before), ("after", after))
    }
    return Calibration(router.name, fit, held, before, after, scores, targets, mismatches)


# --- the command ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--target-share", action="append", default=[], metavar="ROUTE=SHARE",
                        help="keep ROUTE's share of decisions at most SHARE, e.g. deep=0.3; repeatable")  # fmt: skip
    parser.add_argument("--holdout", type=float, default=0.3, metavar="SHARE",
                        help="share of cases held out to check the result (default 0.3)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit/held-out split (default 0)")
    parser.add_argument("--out", metavar="FILE", help="write the config patch here (default: print it)")


def parse_targets(values: Sequence[str], routes: Sequence[str], router: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for v in values:
        route, _, share = v.partition("=")
        try:
            cap = float(share)
        except ValueError:
            cap = math.nan
        if route not in routes:
            names = ", ".join(f"`{r}`" for r in routes)
            raise EvalError(f"--target-share {v}: `{route}` is not a route of router `{router}` ({names})")
        if not 0 <= cap <= 1:
            raise EvalError(f"--target-share {v}: write ROUTE=SHARE with SHARE between 0 and 1, e.g. {route}=0.3")
        out[route] = cap
    return out


def run(args: argparse.Namespace) -> int:
    return guarded(_run, args)


def _run(args: argparse.Namespace) -> int:
    if not 0 <= args.holdout < 1:
        raise EvalError(f"--holdout {args.holdout}: give a share between 0 (no check) and 1, e.g. 0.3")
    settings, source = load_config(resolve_config_path(args.config))
    name = pick_router(settings, args.router)
    targets = parse_targets(args.target_share, settings.routers[name].routes, name)
    every = read_cases(args.data, settings.routers[name].routes, name, args.limit)
    cases = [c for c in every if c.label is not None]
    if not cases:
        raise EvalError(f"`{args.data}` has no cases with a `label`; calibrate needs the expected route")
    progress = Progress(len(cases), "calibrate", enabled=True if args.progress else None)

    async def decide() -> tuple[Router, list[Decision]]:
        async with open_gateway(settings) as gateway:
            return gateway.routers[name], await decide_cases(gateway, name, cases, True, progress)

    router, decisions = asyncio.run(decide())
    cal = calibrate(router, cases, decisions, holdout=args.holdout, seed=args.seed, targets=targets)
    others = [r for n, r in settings.routers.items() if n != name and "semantic" in r.strategies]
    cal.shared_routes = [k[1] for k in cal.changed if k[0] == "routes" and any(k[1] in r.routes for r in others)]
    refusal = cal.refusal
    written = None
    if cal.changed and refusal is None and args.out:
        header = f"# turnout calibrate: router `{name}` on {args.data}; merge into your config file\n"
        try:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(header + yaml.safe_dump(cal.patch, sort_keys=False, allow_unicode=True))
        except OSError as exc:
            raise EvalError(f"cannot write `{args.out}`: {exc.strerror or exc}") from None
        written = args.out
    report = {"router": name, "config": source, "data": str(args.data), "cases": len(cases),
              "skipped_unlabelled": len(every) - len(cases), **summary(cal, args.seed),
              "written": written, "refused": refusal}  # fmt: skip
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print(render(report))
    if refusal is not None:
        where = f"`{args.out}`" if args.out else "the patch"
        print(
            f"turnout: not writing {where}: {refusal}; keep the current settings or add labelled cases", file=sys.stderr
        )
        return 1
    return 0


def summary(cal: Calibration, seed: int) -> dict[str, Any]:
    return {
        "fit": len(cal.fit),
        "holdout": len(cal.held),
        "seed": seed,
        "targets": cal.targets,
        "settings": [{"key": dotted(k), "before": cal.before[k], "after": cal.after[k]} for k in cal.before],
        "before": {part: s.as_dict() for part, s in cal.scores["before"].items()},
        "after": {part: s.as_dict() for part, s in cal.scores["after"].items()},
        "changed": [dotted(k) for k in cal.changed],
        "patch": cal.patch,
        "replay_mismatches": cal.replay_mismatches,
        "shared_routes": cal.shared_routes,
    }


def _v(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def render(r: dict[str, Any]) -> str:
    out = [f"calibrate router `{r['router']}` on {r['data']}: {r['cases']} labelled cases; fit {r['fit']}, "
           f"held out {r['holdout']} (seed {r['seed']})"]  # fmt: skip
    if r["skipped_unlabelled"]:
        out.append(f"skipped {r['skipped_unlabelled']} cases without a `label`")
    goal = "accuracy"
    if r["targets"]:
        goal += ", with " + ", ".join(f"`{k}` at most {100 * v:.1f}%" for k, v in r["targets"].items())
    out += [f"objective: {goal}", ""]
    rows = [["setting", "before", "after"]]
    rows += [[s["key"], _v(s["before"]), _v(s["after"])] for s in r["settings"]]
    out += [table(rows), ""]
    cols = [("fit", "before"), ("fit", "after"), ("holdout", "before"), ("holdout", "after")]
    rows = [["", *(f"{'held-out' if p == 'holdout' else p} {w}" for p, w in cols)]]

    scores = [r[w][p] for p, w in cols]
    rows.append(
        ["accuracy", *("-" if not x["n"] else f"{x['accuracy']:.3f} ({x['correct']}/{x['n']})" for x in scores)]
    )
    for route in r["before"]["fit"]["shares"]:
        rows.append([f"to {route}", *("-" if not x["n"] else f"{100 * x['shares'][route]:.1f}%" for x in scores)])
    out.append(table(rows))
    if not r["holdout"]:
        out.append("no held-out cases: the result is not checked on unseen data")
    if r["replay_mismatches"]:
        out.append(f"warning: {r['replay_mismatches']} decisions differ when replayed from their traces")
    for route in r["shared_routes"]:
        out.append(f"note: `routes.{route}.threshold` is read by other routers too")
    out.append("")
    if not r["changed"]:
        out.append("no change: the current settings are the best found")
    elif r["refused"]:
        out.append(f"refused: {r['refused']}")
    elif r["written"]:
        out.append(f"wrote {r['written']}; merge it into your config file")
    else:
        out += ["patch (merge into your config file, or write it with --out):",
                yaml.safe_dump(r["patch"], sort_keys=False, allow_unicode=True).rstrip()]  # fmt: skip
    return "\n".join(out)
