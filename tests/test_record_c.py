"""The C record and audit row builder (telemetry/_record.c) against the Python functions it replaces
(record.build_record, audit._audit_row).

The Python functions are the reference: for any inputs the C builder must return the same record, value
for value and type for type (compared by repr, where 1, 1.0 and True differ), or raise what Python
raises. Inputs are generated to cover the common path the C code takes and every way off it: no context,
no decision, no target, usage to estimate (the C code asks record.estimate_prompt_tokens), counts past 64
bits, prices with and without a cached price, times that are ints, NaN or infinite, reasons of every
length and strategy, rows of several days.
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import orjson
import pytest

from turnout.config import ModelConfig
from turnout.features import Features
from turnout.telemetry import audit, meter, record
from turnout.types import Attempt, Decision, RequestContext, RequestRecord, Target

needs_c = pytest.mark.skipif(not record.COMPILED, reason="turnout.telemetry._record was not built")

MODELS = {
    "priced": ModelConfig(upstream="up", name="m1", input_price=3.0, output_price=15.0),
    "cached": ModelConfig(upstream="up", name="m2", input_price=0.15, output_price=0.6, cached_input_price=0.075),
    "only-cached": ModelConfig(upstream="up", name="m3", cached_input_price=0.5),
    "free": ModelConfig(upstream="up2", name="m4"),
}
DAY = 86400.0


def pick(rng: random.Random, *options: Any) -> Any:
    return options[rng.randrange(len(options))]


def odd(rng: random.Random) -> bool:
    """Whether to make a value off the common path (one time in ten)."""
    return rng.random() < 0.1


def a_float(rng: random.Random) -> Any:
    if odd(rng):
        return pick(rng, 7, float("nan"), float("inf"), 1e300, -0.0)
    return pick(rng, rng.random() * 10 ** rng.randint(-3, 6), 0.0, 2.0005, 0.0005, 1.2345)


def decision(rng: random.Random) -> Decision:
    strategy = pick(rng, "explicit", "semantic", "fallback", "llm", "classifier", "custom", "passthrough")
    reason = pick(rng, "", "model names a route", "x" * rng.randint(150, 260), None)
    return Decision(
        pick(rng, "lite", "deep"), strategy, router=pick(rng, None, "smart"),
        confidence=pick(rng, None, rng.random(), 1), reason=reason,
        scores=pick(rng, {}, {"lite": 0.8123, "deep": 0.1}), threshold=pick(rng, None, 0.5),
        margin=pick(rng, None, 0.05), provenance=pick(rng, [], ["explicit"], ["llm:cached"]),
        trace=pick(rng, [], [{"strategy": "semantic", "verdict": "below_threshold"}]),
        elapsed_ms=a_float(rng),
    )  # fmt: skip


class Message(dict[str, Any]):
    pass


class Text(str):
    pass


def body(rng: random.Random) -> dict[str, Any]:
    """A request body for the prompt estimate: mostly ASCII messages; now and then text that is not ASCII,
    content parts, no content, subclasses, or `messages` of another type."""
    text = "hello " * rng.randint(0, 50)
    if rng.random() < 0.6:
        return {"messages": [{"role": "user", "content": text}]}
    content = pick(rng, "你好，世界" * rng.randint(1, 9), "café " * 3, [{"type": "text", "text": text}], None,
                   Text(text), 7, "")  # fmt: skip
    message = pick(rng, {"role": "user", "content": content}, {"role": "user"}, Message(content=content), "user")
    if rng.random() < 0.7:
        return {"messages": [{"role": "system", "content": text}, message]}
    messages = pick(rng, (message,), None, "hi", [])
    return pick(rng, {"messages": messages}, {}, {"prompt": text})


def context(rng: random.Random) -> RequestContext | None:
    if rng.random() < 0.05:
        return None
    ctx = RequestContext("r" * 32, body(rng), "auto", rng.random() < 0.5)
    if rng.random() < 0.05:
        ctx.features = Features(ctx.body)  # the router built them: the Python estimate answers
    if rng.random() < 0.9:
        ctx.decision = decision(rng)
    key = pick(rng, "priced", "cached", "only-cached", "free", "unknown")
    if rng.random() < 0.85:
        ctx.target = Target(key, "up", "m")
    ctx.attempts = pick(rng, [], [Attempt(key, None, 200, 1.5, 0.1)], [Attempt(key, "timeout", None, 9.0, 0.0)])
    return ctx


def count(rng: random.Random) -> Any:
    if odd(rng):
        return pick(rng, None, 2**70, True, -3, 1.0)
    return pick(rng, 0, rng.randint(1, 5000), rng.randint(1, 10**15))


def inputs(rng: random.Random) -> tuple[Any, ...]:
    usage = pick(rng, (count(rng), count(rng), count(rng)), (rng.randint(0, 9), rng.randint(0, 9), None),
                 (None, None, None), (None, 7, None), (5, None, 2), (1, 2))  # fmt: skip
    return (
        "r" * 32, pick(rng, 1796600000.0 + rng.random() * 3 * DAY, 1796600000), pick(rng, "chat", "chat", "route"),
        200.0 if odd(rng) else pick(rng, 200, 200, 200, 502, 400), a_float(rng), context(rng),
        pick(rng, None, "timeout"), usage, pick(rng, None, None, a_float(rng)), rng.randint(0, 40),
    )  # fmt: skip


def outcome(fn: Any, *args: Any) -> str:
    try:
        return repr(fn(*args))
    except Exception as exc:
        return f"raises {type(exc).__name__}"


def test_the_compiled_builder_is_built_where_required() -> None:
    """scripts/check (and so CI) sets TURNOUT_REQUIRE_TOOLS=1: there the C builder must have been built."""
    if not record.COMPILED:
        if os.environ.get("TURNOUT_REQUIRE_TOOLS") == "1":
            pytest.fail("turnout.telemetry._record was not built (is a C compiler installed?)")
        pytest.skip("turnout.telemetry._record was not built: turnout builds records in Python")
    assert type(record.record_builder(MODELS)).__name__ == "Builder"
    assert audit.audit_row is not audit._audit_row


@needs_c
def test_the_compiled_builder_agrees_with_the_python_one() -> None:
    """Both paths are taken: the C code's own and its hand-over to the Python function (counted)."""
    rng = random.Random(20261207)
    py_build = functools.partial(record.build_record, MODELS)
    handed_over = 0

    def fallback(*args: Any) -> RequestRecord:
        nonlocal handed_over
        handed_over += 1
        return py_build(*args)

    assert record._record is not None
    c_build = record._record.Builder(record.prices(MODELS), fallback)
    for _ in range(20_000):
        args = inputs(rng)
        expected = outcome(py_build, *args)
        assert outcome(c_build, *args) == expected, args
    assert 2_000 < handed_over < 14_000, handed_over


@needs_c
def test_the_compiled_audit_row_agrees_with_the_python_one() -> None:
    """Rows of records from both builders and of records made by hand (other types, odd values), several
    days interleaved so the C day cache is asked to change days often."""
    rng = random.Random(7)
    c_build = record.record_builder(MODELS)
    for i in range(20_000):
        args = inputs(rng)
        try:
            r = c_build(*args)
        except Exception:
            continue
        if i % 3 == 0:
            r.started_at = pick(rng, r.started_at - DAY, r.started_at + 2 * DAY, 0.0, -1.5, 1796600000)
        if i % 7 == 0:
            r.strategy, r.reason = pick(rng, (None, "x"), ("llm", "y"), ("semantic", None), ("rules", 5))
        assert outcome(audit.audit_row, r) == outcome(audit._audit_row, r), r
    hand_made = RequestRecord("id", 1796600000.5, "chat", 200)
    assert audit.audit_row(hand_made) == audit._audit_row(hand_made)
    assert outcome(audit.audit_row, object()) == outcome(audit._audit_row, object())


@needs_c
def test_the_compiled_audit_serialization_agrees_with_the_python_one() -> None:
    """audit.docs (C) against audit._docs on batches of real records (from generated inputs) with fields
    orjson cannot write (a key that is not a str, an int past 64 bits), text that is not ASCII, objects only
    `default=str` can write, times of other types and NaN, and objects that are no record: the same pairs
    and bad indices, or the same exception, compared by `repr`."""
    rng = random.Random(11)
    c_build = record.record_builder(MODELS)
    day = 1796601600.0  # a UTC midnight
    numpy = orjson.OPT_SERIALIZE_NUMPY
    fields = [f for f in RequestRecord.__dataclass_fields__ if f != "started_at"]
    bad = good = raised = 0
    for _ in range(400):
        batch: list[Any] = []
        for _ in range(rng.randint(0, 40)):
            try:
                r = c_build(*inputs(rng))
            except Exception:
                continue
            if odd(rng):
                odd_value = pick(rng, {1: "x"}, 2**70, "你好", object(), [float("nan")], None)
                setattr(r, rng.choice(fields), odd_value)
            if odd(rng):
                r.started_at = pick(rng, day - 1.0, day, day + DAY - 1e-6, 1796601700, float("nan"), True)
            batch.append(r)
        if odd(rng) and odd(rng):
            batch.insert(rng.randint(0, len(batch)), pick(rng, object(), None, [1.0, "x"]))
        # an `object()` is written as its str (its address), the same in both
        said = outcome(audit._docs, batch, orjson.dumps, numpy)
        assert outcome(audit.docs, batch, orjson.dumps, numpy) == said, batch
        if said.startswith("raises"):
            raised += 1
        else:
            pairs, indices = audit._docs(batch, orjson.dumps, numpy)
            good, bad = good + len(pairs), bad + len(indices)
    assert bad > 50 and good > 3_000 and raised > 10

    def refuse(values: list[Any], **kw: Any) -> bytes:  # an error other than TypeError is not a bad row
        raise ValueError("not a bad row")

    one = [RequestRecord("r", day + 1.0, "chat", 200, route="lite", latency_ms=1.0)]
    assert outcome(audit.docs, one, refuse, 0) == outcome(audit._docs, one, refuse, 0) == "raises ValueError"
    with pytest.raises(TypeError):
        audit.docs((), orjson.dumps, numpy)  # type: ignore[arg-type]


@needs_c
def test_the_compiled_split_by_day_agrees_with_the_python_one() -> None:
    """audit.split (C) against audit._split: (ts, doc) pairs of times in, before and after a day, ints, NaN and
    True, against bounds of floats, ints and an empty day."""
    rng = random.Random(12)
    day = 1796601600.0
    for _ in range(2_000):
        pairs = [(pick(rng, day - 1.0, day, day + 5.5, day + DAY, day + DAY - 1e-6, 1796601700, float("nan"), True),
                  f"[{i}]") for i in range(rng.randint(0, 12))]  # fmt: skip
        start, end = pick(rng, (day, day + DAY), (0.0, 0.0), (int(day), int(day + DAY)), (day, day))
        assert repr(audit.split(pairs, start, end)) == repr(audit._split(pairs, start, end))
    with pytest.raises(TypeError):
        audit.split([(1.0, "x", 2)], 0.0, 2.0)  # type: ignore[list-item]


@needs_c
def test_a_record_from_the_compiled_builder_is_a_whole_request_record() -> None:
    """Every field set, defaults included (cache "off", a new guards list per record), tracked by the
    garbage collector like any record, and usable as one: equal to the Python record, replaceable, hashable
    as the dataclass is not (eq without frozen)."""
    import dataclasses
    import gc

    ctx = RequestContext("r", {}, "lite", True, decision=Decision("lite", "explicit"))
    ctx.target = Target("cached", "up", "m")
    args = ("r", 1796600000.25, "chat", 200, 12.34567, ctx, None, (1000, 20, 400), 3.2105, 5)
    a, b = record.record_builder(MODELS)(*args), record.build_record(MODELS, *args)
    assert a == b and repr(a) == repr(b)
    assert a.cost_usd == pytest.approx((600 * 0.15 + 400 * 0.075 + 20 * 0.6) / 1e6)
    assert (a.cache, a.guards, a.latency_ms, a.ttft_ms) == ("off", [], 12.346, 3.211)
    assert a.guards is not record.record_builder(MODELS)(*args).guards
    assert gc.is_tracked(a)
    assert dataclasses.replace(a, status=502).status == 502
    with pytest.raises(TypeError):
        hash(a)


def test_without_the_compiled_builder_turnout_builds_records_in_python_and_says_so(tmp_path: Path) -> None:
    """Where the extension could not be built, record and audit fall back to the Python functions, and a
    gateway with telemetry on warns at start-up (a fresh interpreter that cannot import the extension)."""
    script = """
import asyncio, functools, logging, sys
sys.modules["turnout.telemetry._record"] = None  # as if it had not been built
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from turnout.telemetry import Telemetry, audit, record
assert not record.COMPILED and audit.audit_row is audit._audit_row and audit.docs is audit._docs
assert audit.split is audit._split
assert record.take is record._take and record.Recorder is None
assert isinstance(record.record_builder({}), functools.partial)
class Quiet:
    async def start(self): pass
telemetry = Telemetry(sinks=[Quiet()])
assert telemetry.record == telemetry._record
asyncio.run(telemetry.start())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("not built at install (no C compiler?): turnout.telemetry._record;") == 1


class Meter:
    """A stream meter as app.relay_stream leaves it (any object with these attributes), or one whose
    `usage` fails or that lacks an attribute."""

    def __init__(self, rng: random.Random) -> None:
        self._usage = pick(rng, (3, 9, None), (None, None, None), (1, 2, 0))
        self._fails = odd(rng)
        self.ttft_ms = pick(rng, None, a_float(rng))
        self.deltas = rng.randint(0, 40)
        if not odd(rng):
            self.error = pick(rng, None, "cancelled", "", 0)

    def usage(self) -> Any:
        if self._fails:
            raise ValueError("usage failed")
        return self._usage


class Scope(dict[str, Any]):
    """A dict subclass: still a dict to the C function."""


def real_meter(rng: random.Random, kind: type[Any]) -> Any:
    """A stream meter of turnout's, fed a stream with or without content and usage."""
    m = kind(1000.0)
    if rng.random() < 0.7:
        m.see(b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n')
    if rng.random() < 0.5:
        m.see(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n')
    return m


def scope(rng: random.Random) -> Any:
    """What the request path leaves in an ASGI scope: every key may be missing, the meter may be a real
    one (C or Python) or a stand-in, times may be ints."""
    values: dict[str, Any] = {
        "turnout.t0": pick(rng, 1000.25, 1000, rng.random() * 1e4),
        "turnout.wall": 1796600000.0 + rng.random(),
        "turnout.meter": pick(
            rng, None, Meter(rng), Meter(rng), real_meter(rng, meter.StreamMeter), real_meter(rng, meter.PyStreamMeter)
        ),
        "turnout.error": pick(rng, None, "timeout", ""),
        "turnout.usage": (rng.randint(0, 9), rng.randint(0, 9), None),
        "turnout.deltas": rng.randint(0, 40),
        "turnout.status": pick(rng, 200, 502, 200.0),
        "turnout.ctx": context(rng),
    }
    for key in list(values):
        if rng.random() < 0.15 if key in ("turnout.t0", "turnout.wall") else rng.random() < 0.3:
            del values[key]
    kind = rng.random()
    return values if kind < 0.8 else Scope(values) if kind < 0.9 else types.MappingProxyType(values)


@needs_c
def test_the_compiled_take_agrees_with_the_python_one() -> None:
    """record.take reads what a finished request left in its scope into one tuple of build_record's inputs;
    the C function must append the same tuple (compared by repr) or raise what Python raises."""
    assert record._record is not None and record.take is record._record.take
    rng = random.Random(2026120701)
    raised = 0
    for _ in range(5_000):
        where = scope(rng)
        endpoint, request_id = pick(rng, "chat", "route"), f"{rng.getrandbits(128):032x}"
        now = pick(rng, 1000.5, 1001, rng.random() * 1e4)
        results = []
        for fn in (record._take, record.take):
            pending: list[tuple[Any, ...]] = [("earlier",)]
            results.append((outcome(fn, where, endpoint, request_id, now, pending), repr(pending)))
        assert results[0] == results[1], where
        raised += results[0][0].startswith("raises")
    assert 500 < raised < 2_500, raised
    with pytest.raises(TypeError):
        record.take({}, "chat", "r", 1.0, ())  # type: ignore[arg-type]


def records(rng: random.Random, n: int) -> list[RequestRecord]:
    """Records as the builder makes them, some with a field changed to a value off the C code's path."""
    build = record.record_builder(MODELS)
    out: list[RequestRecord] = []
    while len(out) < n:
        try:
            r = build(*inputs(rng))
        except Exception:
            continue
        if odd(rng):
            field = pick(rng, "latency_ms", "ttft_ms", "cost_usd", "prompt_tokens", "completion_tokens", "decision_ms")
            setattr(r, field, pick(rng, 3, True, 2**70, None, -0.0, float("nan"), 5.5))
        if rng.random() < 0.2:
            r.attempts = [Attempt(pick(rng, "priced", "x"), pick(rng, None, "timeout"), 200, pick(rng, 1.5, 2), 0.0)
                          for _ in range(rng.randint(1, 3))]  # fmt: skip
        out.append(r)
    return out


@needs_c
def test_the_compiled_metrics_helpers_agree_with_the_python_ones() -> None:
    """signature, columns and observe (metrics.py) against their Python references, on generated groups
    of records, histograms and values."""
    from turnout.telemetry import metrics

    rng = random.Random(11)
    labels = {None: "none", "priced": "priced", "cached": "cached"}
    in_c = 0
    for _ in range(3_000):
        group = records(rng, rng.randint(1, 12))
        for r in group:
            assert outcome(metrics.signature, r, labels) == outcome(metrics._signature, r, labels), r
        got = metrics.columns(group)  # None: left to the Python function
        if got is not None:
            in_c += 1
            assert repr(got) == outcome(metrics._columns, group), group
    assert in_c > 1_500, in_c
    bounds = metrics.LATENCY_BUCKETS
    for _ in range(3_000):
        values = [pick(rng, rng.random() * 10 ** rng.randint(-4, 3), *bounds, float("nan"), -1.0, 1e308)
                  for _ in range(rng.randint(0, 20))]  # fmt: skip
        start = [float(rng.randint(0, 5)) for _ in range(len(bounds) + 1)] + [rng.random()]
        a, b = list(start), list(start)
        assert metrics.observe(a, bounds, values) and metrics._observe(b, bounds, values)
        assert repr(a) == repr(b), values
    assert not metrics.observe([0.0] * 3, (1.0, 2), [1.0])  # an int bound: left to Python
    assert not metrics.observe([0.0] * 4, (1.0, 2.0), [1])  # an int value
