"""The C usage reader (telemetry/_usage.c) against the Python one it replaces (meter._usage_of).

The Python reader is the reference: the C one must return the same counts for any bytes, including bodies
that are truncated, malformed, or built to trip a hand-written parser. Bodies are assembled from the
pieces both readers look for (keys, every whitespace byte `\\s` matches, colons, commas, braces, digit
runs longer than a machine word) and from random bytes, then cut at random places; every body is also
read from random start offsets, negative and past its end included.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from turnout import proxy
from turnout.telemetry import meter

PIECES = [
    b'"usage"', b'"prompt_tokens"', b'"completion_tokens"', b'"cached_tokens"', b'"prompt_cache_hit_tokens"',
    b'"prompt_tokens_details"', b"cache", b'"', b":", b",", b"{", b"}", b"[", b"]", b"null", b"true",
    b" ", b"\t", b"\n", b"\r", b"\f", b"\v", b"0", b"7", b"42", b"007", b"12345678901234567890123",
    b"999999999999999999", b"1000000000000000000", b'\\"usage\\"', b"data: ", b"\n\n", b"-1", b"1.5", b"\x00",
    b"\xff", b'"usage":{', b'"usage": {"prompt_tokens": ', b'"completion_tokens":', b'"usage":null',
]  # fmt: skip
SHAPES = [
    b'{"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":9}}',
    b'{"usage": {"completion_tokens": %d, "prompt_tokens": %d}}',
    b'{"usage":{"prompt_tokens":%d,"completion_tokens":%d,"prompt_tokens_details":{"cached_tokens":3}}}',
    b'{"usage" :\n{ "prompt_tokens" :\t%d ,\r"completion_tokens"\f:\v%d }}',
    b'{"usage":{"prompt_tokens":%d,"prompt_cache_hit_tokens":%d,"completion_tokens":4}}',
]


def bodies(rng: random.Random, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        if i % 3 == 0:  # a realistic shape, maybe damaged
            body = rng.choice(SHAPES) % (rng.randrange(10 ** rng.randrange(1, 25)), rng.randrange(1000))
        else:
            body = b"".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 40)))
        if rng.random() < 0.3:
            body = body[: rng.randrange(len(body) + 1)]
        if rng.random() < 0.2:
            at = rng.randrange(len(body) + 1)
            body = body[:at] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4))) + body[at:]
        out.append(body)
    return out


def test_the_compiled_reader_is_built_where_required() -> None:
    """scripts/check (and so CI) sets TURNOUT_REQUIRE_TOOLS=1: there the C reader must have been built,
    or every other usage test would quietly test the Python one only."""
    if not meter.COMPILED:
        if os.environ.get("TURNOUT_REQUIRE_TOOLS") == "1":
            pytest.fail("turnout.telemetry._usage was not built (is a C compiler installed?)")
        pytest.skip("turnout.telemetry._usage was not built: turnout runs the Python reader")
    assert meter.usage_of is not meter._usage_of


def test_the_compiled_reader_agrees_with_the_python_one() -> None:
    if not meter.COMPILED:
        pytest.skip("turnout.telemetry._usage was not built")
    rng = random.Random(20261207)
    for body in bodies(rng, 20_000):
        starts = [0, rng.randrange(-len(body) - 3, len(body) + 3), len(body), -1]
        for start in starts:
            assert meter.usage_of(body, start) == meter._usage_of(body, start), (body, start)
        assert meter.usage_of(body) == meter._usage_of(body), body


def test_the_compiled_reader_checks_its_arguments() -> None:
    if not meter.COMPILED:
        pytest.skip("turnout.telemetry._usage was not built")
    for bad in [(), (b"", 0, 1), ("text",), (bytearray(b'"usage"'),), (b"", "0")]:
        with pytest.raises(TypeError):
            meter.usage_of(*bad)
    big = b'{"usage":{"prompt_tokens":' + b"9" * 400 + b',"completion_tokens":1}}'
    assert meter.usage_of(big) == (int("9" * 400), 1, None) == meter._usage_of(big)


def test_without_the_compiled_reader_turnout_reads_usage_in_python_and_says_so(tmp_path: Path) -> None:
    """Where the extension could not be built, the import falls back to the Python reader, and a gateway
    with telemetry on warns at start-up (run in a fresh interpreter that cannot import the extension)."""
    script = """
import asyncio, logging, sys
sys.modules["turnout.telemetry._usage"] = None  # as if it had not been built
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from turnout.telemetry import Telemetry, meter
assert not meter.COMPILED and meter.usage_of is meter._usage_of and meter.StreamMeter is meter.PyStreamMeter
from turnout import proxy
assert proxy.strip_usage is proxy._strip_usage
print(meter.usage_of(b'{"usage":{"prompt_tokens":8,"completion_tokens":7}}'))
class Quiet:  # a sink that does nothing: telemetry is on
    async def start(self): pass
asyncio.run(Telemetry(sinks=[]).start())  # telemetry off: no usage is read, no warning
asyncio.run(Telemetry(sinks=[Quiet()]).start())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(8, 7, None)"
    assert out.stderr.count("not built at install (no C compiler?): turnout.telemetry._usage;") == 1


def test_the_compiled_delta_count_agrees_with_bytes_count() -> None:
    """meter.count_deltas (C, a stream's deltas once per chunk) is `bytes.count`: non-overlapping
    occurrences, an empty needle matching at every position; checked on generated bodies and needles."""
    if not meter.COMPILED:
        pytest.skip("turnout.telemetry._usage was not built")
    rng = random.Random(5)
    # needles with a `{` after their first byte are searched 16 positions a step (`:{`); those that overlap
    # themselves (`a{a` in `a{a{a`) check that no two counted occurrences overlap there either
    needles = [b'"delta":{"', b'"delta": {"', b"aa", b"a", b"", b'"', b"\x00", b"a{a", b"a{a{a", b":{", b"x{"]
    repeats = [b"aaaa" * rng.randint(0, 9) for _ in range(50)] + [b"a{" * rng.randint(0, 60) + b"a" for _ in range(50)]
    for body in bodies(rng, 5_000) + repeats:
        for needle in needles + [body[i : i + rng.randint(0, 12)] for i in range(0, len(body), 37)]:
            assert meter.count_deltas(body, needle) == body.count(needle), (body, needle)
    for bad in [(b"a",), (b"a", "a"), (bytearray(b"a"), b"a"), (b"a", b"a", b"a")]:
        with pytest.raises(TypeError):
            meter.count_deltas(*bad)


STREAM_PIECES = [
    b"data: ", b"data:", b"\n\n", b"\r\n\r\n", b"\n", b'{"choices":[{"delta":{', b'{"choices": [{"delta": {',
    b'"delta":{"', b'"delta": {"', b'"delta"', b'"content":"', b'"content": "', b'"content":""', b'"content":  "x',
    b'"reasoning_content":"', b'"arguments":"', b'"arguments": ""', b"_content", b'"cont', b"ent", b'ent":"',
    b'"argum', b's":"', b'"contents":"', b'"role":"assistant",', b'"tok"', b"}]}", b"}", b'"', b":", b" ", b"\t",
    b"\v", b"[DONE]", b'"usage":{"prompt_tokens":7,"completion_tokens":3}', b'"usage": null', b"x" * 40,
    b'"cached_tokens":2', b"\xff", b"\x00",
]  # fmt: skip


def streams(rng: random.Random, n: int) -> list[list[bytes]]:
    """Streams built from STREAM_PIECES (and now and then a realistic one), cut into chunks at random."""
    out = []
    for i in range(n):
        if i % 4 == 0:
            spaced = rng.random() < 0.5
            delta = b'"delta": {"content": "t%d"}' if spaced else b'"delta":{"content":"t%d"}'
            events = [b'data: {"choices":[{' + delta % k + b"}]}" for k in range(rng.randrange(0, 30))]
            if rng.random() < 0.5:
                events.append(b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":%d}}' % len(events))
            events.append(b"data: [DONE]")
            data = b"\n\n".join(events) + b"\n\n"
        else:
            data = b"".join(rng.choice(STREAM_PIECES) for _ in range(rng.randrange(0, 80)))
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(0, 12)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        out.append([c for c in chunks if c] if rng.random() < 0.8 else chunks)  # the relay never sends b""
    return out


def test_the_compiled_stream_meter_agrees_with_the_python_one() -> None:
    """_usage.Meter (C) against meter.PyStreamMeter on generated streams cut into chunks at random, sized
    or not: the same first-content chunk, delta count (or estimate) and usage after every chunk."""
    if not meter.COMPILED:
        pytest.skip("turnout.telemetry._usage was not built")
    assert meter.StreamMeter is not meter.PyStreamMeter
    rng = random.Random(1207)
    found = counted = 0
    for chunks in streams(rng, 6_000):
        sized = rng.random() < 0.4
        c, py = meter.StreamMeter(1.5), meter.PyStreamMeter(1.5)
        c.sized = py.sized = sized
        for chunk in chunks:
            c.see(chunk)
            py.see(chunk)
            assert (c.first_content is None) == (py.first_content is None), chunks
            assert c.deltas == py.deltas and c.usage() == py.usage(), (chunks, sized)
        assert (c.ttft_ms is None) == (py.ttft_ms is None) and c.sized == sized and c.started == 1.5
        found += c.first_content is not None
        counted += c.deltas > 1
    assert found > 2_000 and counted > 1_000  # both paths are taken, often


def test_the_compiled_stream_meter_checks_its_arguments() -> None:
    if not meter.COMPILED:
        pytest.skip("turnout.telemetry._usage was not built")
    m = meter.StreamMeter(0.0)
    for bad in ["text", bytearray(b"x"), None]:
        with pytest.raises(TypeError):
            m.see(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.error = 5  # type: ignore[assignment]
    m.error = "upstream_5xx"
    assert m.error == "upstream_5xx"
    m.error = None
    assert m.error is None and m.usage() == (None, None, None) and m.deltas == 0 and m.ttft_ms is None
    with pytest.raises(AttributeError):
        m.first_content = 1.0  # type: ignore[misc]
    bare = type(m).__new__(type(m))  # never initialized: empty, not broken
    assert bare.usage() == (None, None, None) and bare.deltas == 0 and bare.ttft_ms is None
    bare.see(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
    assert bare.deltas == 1 and bare.first_content is not None


SSE_PIECES = [
    b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n',
    b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":4}}\n\n',
    b'data: {"id": "x", "choices": [], "usage": {"prompt_tokens": 8}}\r\n\r\n',
    b'data: {"id":"x","choices":[]}\n\n',  # an empty choice list without usage: kept
    b'data: {"choices":[],"x":1}\r\n\r\ndata: {"usage":{}}\n\n',  # usage in the event after
    b"data: [DONE]\n\n",
    b"[]",
    b'"usage"',
    b"\r\n\r\n",
    b"\n\n",
    b"\r\n",
    b'"choices": []',
    b'"choices":[]',
    b"data: ",
    b"x" * 40,
    b"\n",
]


def test_the_compiled_usage_stripping_agrees_with_the_python_one() -> None:
    """proxy.strip_usage (C) takes the usage events out of whole SSE events exactly as proxy._strip_usage
    does, for any bytes: generated from SSE events, separators and the needles it looks for, in any order
    and cut anywhere."""
    if not meter.COMPILED:
        pytest.skip("turnout.telemetry._usage was not built")
    assert proxy.strip_usage is not proxy._strip_usage
    rng = random.Random(20261207)
    removed = 0
    for _ in range(20_000):
        data = b"".join(rng.choice(SSE_PIECES) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.3:
            data = data[rng.randint(0, len(data)) :][: rng.randint(0, len(data))]
        expected = proxy._strip_usage(data)
        assert proxy.strip_usage(data) == expected, data
        removed += len(expected) < len(data)
    assert removed > 5_000, removed
    with pytest.raises(TypeError):
        proxy.strip_usage(bytearray(b"[]"))  # type: ignore[arg-type]
