#!/usr/bin/env python3
"""How well the built-in banks route public labelled prompts, through the embedded default config.

    .venv/bin/python bench/banks_quality.py [--data ../shared/data] [--sweep] [--runtime onnxruntime-int8]

Sets (development scores; part of each set's source is kept aside for independent evaluation):
  lite/deep   vLLM semantic-router privacy exemplars: simple_task, general_knowledge -> lite;
              architecture_analysis, multi_step_tradeoffs, root_cause_analysis -> deep      (router `auto`)
  category    MT-Bench + Vicuna-bench first turns and BELLE (Chinese, research-only: measured, never
              shipped) task types mapped onto code/math/writing/reasoning/chat               (router `auto-category`)
With --sweep, the semantic threshold and margin are swept on the same rows (what defaults to ship).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from turnout.config import default_config_tree, validate
from turnout.gateway import Gateway
from turnout.types import RequestContext
from turnout.upstreams import build_upstream

LITE = {"simple_task", "general_knowledge"}
DEEP = {"architecture_analysis", "multi_step_tradeoffs", "root_cause_analysis"}
MT = {"coding": "code", "math": "math", "writing": "writing", "reasoning": "reasoning", "fermi": "reasoning",
      "counterfactual": "reasoning", "generic": "chat", "roleplay": "chat"}  # fmt: skip
BELLE = {"code": "code", "math": "math", "rewrite": "writing", "generation": "writing", "brainstorming": "writing",
         "open qa": "chat"}  # fmt: skip


def lite_deep(data: Path) -> list[tuple[str, str, str]]:
    labels = json.loads((data / "semantic-router/config/knowledge_bases/privacy/labels.json").read_text())["labels"]
    rows = []
    for name, entry in labels.items():
        route = "lite" if name in LITE else "deep" if name in DEEP else None
        if route:
            rows += [(text, route, "en") for text in entry["exemplars"]]
    return rows


def category(data: Path) -> list[tuple[str, str, str]]:
    rows = []
    for f in ("mt_bench_question.jsonl", "vicuna_bench_question.jsonl"):
        for line in (data / "mt-bench" / f).read_text().splitlines():
            q = json.loads(line)
            if q["category"] in MT:
                rows.append((q["turns"][0], MT[q["category"]], "en"))
    for line in (data / "belle-eval/eval_set.json").read_text().splitlines():
        q = json.loads(line)
        label = q["class"].replace("\u00a0", " ")
        if label in BELLE:
            rows.append((q["question"], BELLE[label], "zh"))
    return rows


async def decide_all(gw: Gateway, router: str, rows: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    out = []
    for text, label, lang in rows:
        body = {"model": router, "messages": [{"role": "user", "content": text}]}
        ctx = RequestContext(uuid.uuid4().hex, body, router, False)
        d = await gw.routers[router].decide(ctx, exhaustive=True)
        sem = next((t for t in d.trace if t["strategy"] == "semantic" and "scores" in t), None)
        out.append({"label": label, "lang": lang, "route": d.route, "strategy": d.strategy, "ms": d.elapsed_ms,
                    "scores": sem["scores"] if sem else {}})  # fmt: skip
    return out


def replay(results: list[dict[str, Any]], fallback: str, threshold: float, margin: float) -> float:
    hits = 0
    for r in results:
        route = fallback
        if r["strategy"] in ("rules", "explicit"):
            route = r["route"]
        elif r["scores"]:
            ranked = sorted(r["scores"].items(), key=lambda kv: -kv[1])
            lead = ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else 0.0)
            if ranked[0][1] >= threshold and lead >= margin:
                route = ranked[0][0]
        hits += route == r["label"]
    return hits / len(results)


def report(name: str, results: list[dict[str, Any]]) -> None:
    acc = sum(r["route"] == r["label"] for r in results) / len(results)
    print(f"\n## {name}: {len(results)} rows, accuracy {acc:.3f}")
    for lang in sorted({r["lang"] for r in results}):
        sub = [r for r in results if r["lang"] == lang]
        print(f"  {lang}: {sum(r['route'] == r['label'] for r in sub) / len(sub):.3f} ({len(sub)} rows)")
    for label in sorted({r["label"] for r in results}):
        sub = [r for r in results if r["label"] == label]
        got = Counter(r["route"] for r in sub)
        print(f"  {label:<10} recall {got[label] / len(sub):.3f}  decided as {dict(got.most_common())}")
    ms = sorted(r["ms"] for r in results)
    print(f"  strategies {dict(Counter(r['strategy'] for r in results))}")
    print(f"  decision ms p50 {statistics.median(ms):.2f} p99 {ms[int(0.99 * (len(ms) - 1))]:.2f}")


def sweep(results: list[dict[str, Any]], fallback: str) -> None:
    grid = [(t / 100, m / 100) for t in range(0, 60, 2) for m in range(12)]
    best = max((replay(results, fallback, t, m), t, m) for t, m in grid)
    print(f"  sweep: best accuracy {best[0]:.3f} at threshold {best[1]:.2f}, margin {best[2]:.2f}")


async def main(data: Path, do_sweep: bool, runtime: str) -> None:
    tree = default_config_tree({})
    tree["encoders"] = {"default": {"runtime": runtime}}
    settings = validate(tree, {})
    gw = Gateway(settings, {n: build_upstream(n, c) for n, c in settings.upstreams.items()})
    await gw.start()
    for name, router, rows in (("lite/deep (auto)", "auto", lite_deep(data)),
                               ("category (auto-category)", "auto-category", category(data))):  # fmt: skip
        results = await decide_all(gw, router, rows)
        report(name, results)
        if do_sweep:
            sweep(results, gw.routers[router].fallback)
    await gw.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--runtime", default="onnxruntime", help="the USE encoder's `runtime` (onnxruntime-int8, numpy)")
    a = ap.parse_args()
    asyncio.run(main(Path(a.data), a.sweep, a.runtime))
