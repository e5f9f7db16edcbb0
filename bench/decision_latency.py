#!/usr/bin/env python3
"""Decision latency of the embedded default routers, on this machine (not a test: it prints numbers).

    .venv/bin/python bench/decision_latency.py [--n 300] [--runtime onnxruntime-int8]

Rows: the `auto` router (explicit, rules, semantic with the bundled USE encoder, hybrid scoring) on
English and Chinese prompts of fixed lengths; on real prompts under 300 characters (the first turns of
MT-Bench and Vicuna-bench in English, BELLE-eval questions in Chinese, from ../shared/data; each prompt
decided in turn, so the p50 is over the prompts' own length mix); a rules-only router; and the parts of
a semantic decision measured alone (encoder call, sparse scoring). Targets (issue 3): p50 <= 3 ms under 300
characters; p99 <= 15 ms up to 2,000 characters (the `max_chars` cap applies); rules-only p50 <= 0.1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable

from turnout.config import default_config_tree, validate
from turnout.encoders import encode_one
from turnout.gateway import Gateway
from turnout.types import RequestContext
from turnout.upstreams import build_upstream

EN = ("How do I reverse a list in Python without modifying the original? ",
      "Explain the trade-offs between eventual and strong consistency for a payments ledger. ")  # fmt: skip
ZH = ("请帮我用 Python 写一个函数，把列表反转但不修改原列表。", "分析一下最终一致性和强一致性在支付账本中的权衡。")


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def real_prompts(max_chars: int = 300) -> dict[str, list[str]]:
    """First turns of MT-Bench + Vicuna-bench (en) and BELLE-eval questions (zh) under `max_chars`."""
    en: list[str] = []
    for name in ("mt_bench_question.jsonl", "vicuna_bench_question.jsonl"):
        with open(os.path.join(DATA, "mt-bench", name)) as f:
            en += [json.loads(line)["turns"][0] for line in f]
    with open(os.path.join(DATA, "belle-eval", "eval_set.json")) as f:
        zh = [json.loads(line)["question"] for line in f if line.strip()]
    return {lang: [t for t in texts if len(t) < max_chars] for lang, texts in (("en", en), ("zh", zh))}


def prompt(parts: tuple[str, ...], chars: int) -> str:
    text = ""
    while len(text) < chars:
        text += parts[len(text) % len(parts)]
    return text[:chars]


async def timed(n: int, fn: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    for _ in range(10):
        await fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


async def main(n: int, real: dict[str, list[str]], runtime: str) -> None:
    tree = default_config_tree({})
    tree["encoders"] = {"default": {"runtime": runtime}}
    tree["routers"]["rules-only"] = {"routes": ["lite", "deep"], "strategies": ["rules"], "fallback": "lite",
                                     "rules": tree["routers"]["auto"]["rules"]}  # fmt: skip
    settings = validate(tree, {})
    gw = Gateway(settings, {k: build_upstream(k, c) for k, c in settings.upstreams.items()})
    await gw.start()
    semantic = next(s for s in gw.routers["auto"].strategies if s.name == "semantic")
    encoder = gw.encoders.get("default")

    def decide(router: str, text: str) -> Callable[[], Awaitable[object]]:
        body = {"model": router, "messages": [{"role": "user", "content": text}]}
        return lambda: gw.routers[router].decide(RequestContext("bench", dict(body), router, False))

    print(f"{'what':<44} {'p50 ms':>8} {'p99 ms':>8}")
    for lang, parts in (("en", EN), ("zh", ZH)):
        for chars in (80, 280, 1000, 2000, 8000):
            text = prompt(parts, chars)
            p50, p99 = await timed(n, decide("auto", text))
            print(f"{f'auto (rules+semantic), {lang}, {chars} chars':<44} {p50:>8.3f} {p99:>8.3f}")
    if real:
        for lang, texts in real.items():
            cycle = itertools.cycle([decide("auto", t) for t in texts])
            p50, p99 = await timed(max(n, len(texts)), lambda c=cycle: next(c)())  # type: ignore[misc]
            mid = statistics.median(len(t) for t in texts)
            label = f"auto, {len(texts)} real {lang} prompts < 300 chars (median {mid:.0f})"
            print(f"{label:<44} {p50:>8.3f} {p99:>8.3f}")
    for chars in (80, 2000):
        p50, p99 = await timed(n, decide("rules-only", prompt(EN, chars)))
        print(f"{f'rules-only, en, {chars} chars':<44} {p50:>8.3f} {p99:>8.3f}")
    for chars in (80, 2000):
        text = prompt(EN, chars)
        p50, p99 = await timed(n, lambda t=text: encode_one(encoder, t, 10))  # type: ignore[misc]
        print(f"{f'  encoder call alone, {chars} chars':<44} {p50:>8.3f} {p99:>8.3f}")

        async def sparse(t: str = text) -> object:
            return semantic.sparse.scores(t)  # type: ignore[attr-defined]

        p50, p99 = await timed(n, sparse)
        print(f"{f'  sparse scoring alone, {chars} chars':<44} {p50:>8.3f} {p99:>8.3f}")
    await gw.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="decisions per row")
    ap.add_argument("--runtime", default="onnxruntime", help="the USE encoder's `runtime` (onnxruntime-int8, numpy)")
    a = ap.parse_args()
    asyncio.run(main(a.n, real_prompts() if os.path.isdir(DATA) else {}, a.runtime))
