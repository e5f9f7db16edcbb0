#!/usr/bin/env python3
"""Routing quality of the `classifier` strategy on the shared data sets: prints numbers, asserts nothing.

  .venv/bin/python bench/routing_quality.py                      # everything, seeds 0,1,2
  .venv/bin/python bench/routing_quality.py --only domain,cost --seeds 0 --json /tmp/rq.json
  .venv/bin/python bench/routing_quality.py --runtime onnxruntime-int8      # the int8 encoder

Sections (each trains in memory with turnout.training, exactly as `turnout train` does):
  domain   14-way MMLU-Pro domain: train on semantic-router's 210 exemplars plus MMLU-Pro questions,
           accuracy on a seeded holdout of the questions (texts that are also exemplars never held out),
           on semantic-router's bench/data/test_data.json and on e2e domain_classify_cases when present.
  belle    10 Chinese task types (BELLE eval set), accuracy on seeded holdouts. BELLE is research-only:
           nothing trained on it is ever written to disk.
  cost     Llama-3.1-8B-Instruct (cheap) vs -70B-Instruct (strong) on MMLU-Pro correctness: quality vs share
           of strong calls, APGR, CPT(50%), against a random router at every share.
  latency  per decision: the model alone (n-grams + dot products) and the whole strategy with the encoder.

USE vectors are cached under --cache (default /tmp/turnout-bench-cache), keyed by the encoder id and the texts.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from turnout.config import ClassifierConfig, EncoderConfig
from turnout.encoders import EncoderSet
from turnout.features import Features
from turnout.strategies.classifier import ClassifierStrategy, Model, encoder_max_tokens, good_enough
from turnout.training import Params, Row, apgr, cost_report, cpt, embed, fit, predict_all, quality_curve, split, text_of
from turnout.types import RequestContext

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CHEAP, STRONG = "Meta-Llama-3_1-8B-Instruct_5shots", "Meta-Llama-3_1-70B-Instruct_5shots"


def jsonl(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:  # not splitlines(): texts hold U+2028 and friends
        return [json.loads(line) for line in f if line.strip()]


def text_row(text: str, label: str | None = None, outcomes: dict[str, float] | None = None) -> Row:
    return Row(0, text_of({"messages": [{"role": "user", "content": text}]}), label, outcomes)


class Vectors:
    """USE vectors through turnout's EncoderSet (threads=1), cached on disk per list of texts."""

    def __init__(self, cache: Path, runtime: str = "onnxruntime") -> None:
        self.cache = cache
        self.encoders = EncoderSet({"default": EncoderConfig(threads=1, runtime=runtime)}, {})  # type: ignore[arg-type]
        self.encoder = self.encoders.get("default")

    def __call__(self, rows: list[Row]) -> np.ndarray:
        texts = [r.text for r in rows]
        key = hashlib.sha256(("\x00".join([self.encoder.id, *texts])).encode()).hexdigest()[:24]
        path = self.cache / f"{key}.npy"
        if path.exists():
            return np.load(path, allow_pickle=False)
        t0 = time.perf_counter()
        vecs = asyncio.run(embed(self.encoder, texts, batch=64))
        print(f"  (embedded {len(texts)} texts in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        self.cache.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
        return vecs


def accuracy(model: Model, rows: list[Row], vecs: np.ndarray) -> float:
    probs = predict_all(model, vecs, [r.text for r in rows])
    return float(np.mean([model.labels[int(i)] == r.label for i, r in zip(probs.argmax(1), rows, strict=True)]))


def seeds_line(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} (seeds: {', '.join(f'{v:.3f}' for v in values)})"


# --- sections -------------------------------------------------------------------------------


def domain(vectors: Vectors, seeds: list[int], out: dict[str, Any]) -> Model:
    labels = json.loads((DATA / "semantic-router/config/knowledge_bases/mmlu/labels.json").read_text())["labels"]
    exemplars = [text_row(q, cat) for cat, v in labels.items() for q in v["exemplars"]]
    questions = [text_row(q["question"], q["category"]) for q in jsonl(DATA / "mmlu-pro-correctness/questions.jsonl")]
    ex_vecs, q_vecs = vectors(exemplars), vectors(questions)
    extra: dict[str, list[Row]] = {}
    bench = json.loads((DATA / "semantic-router/bench/data/test_data.json").read_text())
    extra["semantic-router test_data.json"] = [text_row(r["text"], r["true_label"]) for r in bench]
    e2e = DATA / "semantic-router/e2e/testcases/testdata/domain_classify_cases.json"
    if e2e.exists():
        cases = json.loads(e2e.read_text())
        extra["e2e domain_classify_cases"] = [text_row(r["question"], r["category"]) for r in cases]
    extra_vecs = {k: vectors(v) for k, v in extra.items()}
    seen = {r.text for r in exemplars}
    params = Params.for_mode("category")
    held: list[float] = []
    others: dict[str, list[float]] = {k: [] for k in extra}
    print(f"\n== 14-way MMLU-Pro domain ({len(exemplars)} exemplars + {len(questions)} questions)")
    model = None
    for seed in seeds:
        train_idx, test_idx = split(questions, 0.2, seed)
        train_idx += [i for i in test_idx if questions[i].text in seen]  # never hold out an exemplar's text
        test_idx = [i for i in test_idx if questions[i].text not in seen]
        rows = exemplars + [questions[i] for i in train_idx]
        t0 = time.perf_counter()
        model = fit(rows, np.concatenate([ex_vecs, q_vecs[train_idx]]), "category", vectors.encoder.id, params)
        fit_s = time.perf_counter() - t0
        held.append(accuracy(model, [questions[i] for i in test_idx], q_vecs[test_idx]))
        for k, rows_k in extra.items():
            others[k].append(accuracy(model, rows_k, extra_vecs[k]))
        print(f"  seed {seed}: train {len(rows)}, holdout {len(test_idx)}: {held[-1]:.3f} (fit {fit_s:.0f} s)")
    temperatures = f"softmax temperature {model.metadata['temperature']:.2f}" if model else ""
    print(f"  holdout accuracy: {seeds_line(held)}   (target >= 0.82; USE + LR alone was ~0.79); {temperatures}")
    for k, v in others.items():
        print(f"  {k} ({len(extra[k])} rows): {seeds_line(v)}")
    if not e2e.exists():
        print("  e2e domain_classify_cases: not in shared/data, skipped")
    out["domain"] = {"holdout": held, **others}
    assert model is not None
    return model


def belle(vectors: Vectors, seeds: list[int], out: dict[str, Any]) -> None:
    raw = jsonl(DATA / "belle-eval/eval_set.json")
    rows = [text_row(r["question"], r["class"].replace("\u00a0", " ")) for r in raw]
    vecs = vectors(rows)
    print(f"\n== Chinese task types, BELLE eval ({len(rows)} rows, research-only: measured, never saved)")
    params = Params.for_mode("category")
    accs, dense_only = [], []
    for seed in seeds:
        tr, te = split(rows, 0.2, seed)
        model = fit([rows[i] for i in tr], vecs[tr], "category", vectors.encoder.id, params)  # in memory only
        accs.append(accuracy(model, [rows[i] for i in te], vecs[te]))
        base = Params(chars=0, words=0, head=0)
        model = fit([rows[i] for i in tr], vecs[tr], "category", vectors.encoder.id, base)
        dense_only.append(accuracy(model, [rows[i] for i in te], vecs[te]))
    print(f"  holdout accuracy: {seeds_line(accs)}   (target >= 0.80)")
    print(f"  USE vectors alone: {seeds_line(dense_only)}")
    out["belle"] = {"holdout": accs, "use_only": dense_only}


def cost(vectors: Vectors, seeds: list[int], out: dict[str, Any]) -> None:
    questions = jsonl(DATA / "mmlu-pro-correctness/questions.jsonl")
    with (DATA / "mmlu-pro-correctness/correctness.csv").open() as f:
        table = {int(r["question_id"]): r for r in csv.DictReader(f)}
    rows = []
    for q in questions:
        c, s = table[q["question_id"]][CHEAP], table[q["question_id"]][STRONG]
        if c != "" and s != "":
            rows.append(text_row(q["question"], outcomes={"lite": float(c), "deep": float(s)}))
    vecs = vectors(rows)
    print(f"\n== Cost/quality: lite = Llama-3.1-8B-Instruct, deep = Llama-3.1-70B-Instruct ({len(rows)} questions)")
    results = []
    grid = np.round(np.arange(0, 1.01, 0.1), 1)
    for seed in seeds:
        tr, te = split(rows, 0.2, seed)
        params = Params.for_mode("cost")
        model = fit([rows[i] for i in tr], vecs[tr], "cost", vectors.encoder.id, params, ["lite", "deep"])
        test = [rows[i] for i in te]
        quality = predict_all(model, vecs[te], [r.text for r in test])
        report = cost_report(model, test, quality)
        cheap = np.array([r.outcomes["lite"] for r in test if r.outcomes])
        strong = np.array([r.outcomes["deep"] for r in test if r.outcomes])
        shares, curve = quality_curve(np.array([good_enough(q)[0] for q in quality]), cheap, strong)
        q0, q1 = float(cheap.mean()), float(strong.mean())
        at = [float(np.interp(g, shares, curve)) for g in grid]
        rng = np.random.default_rng(seed)  # a random router: 20 draws of a random order
        rand = [quality_curve(rng.random(len(test)), cheap, strong) for _ in range(20)]
        rand_apgr = statistics.mean(apgr(s, q, q0, q1) for s, q in rand)
        rand_cpt = statistics.mean(cpt(s, q, q0, q1) for s, q in rand)
        rand_at = [q0 + g * (q1 - q0) for g in grid]  # its expectation at each share
        results.append({"seed": seed, "rows": len(te), "lite": q0, "deep": q1, "apgr": report["apgr"],
                        "cpt50": report["cpt50"], "random_apgr": rand_apgr, "random_cpt50": rand_cpt,
                        "quality_at": at, "random_at": rand_at, "thresholds": report["thresholds"]})  # fmt: skip
        print(f"  seed {seed}: holdout {len(te)}: lite {q0:.3f}, deep {q1:.3f}; APGR {report['apgr']:.3f} "
              f"(random {rand_apgr:.3f}), CPT(50%) {report['cpt50']:.1%} (random {rand_cpt:.1%})")  # fmt: skip
    first = results[0]
    print(f"  quality vs share of deep calls (seed {first['seed']}):")
    print("    share   " + " ".join(f"{g:>6.0%}" for g in grid))
    print("    router  " + " ".join(f"{q:>6.3f}" for q in first["quality_at"]))
    print("    random  " + " ".join(f"{q:>6.3f}" for q in first["random_at"]))
    print("  thresholds for a share of deep calls (seed 0 holdout): "
          + ", ".join(f"{t['share']['deep']:.0%} @ {t['threshold']:.3f}" for t in first["thresholds"]))  # fmt: skip
    print(f"  APGR {seeds_line([r['apgr'] for r in results])}; random router 0.500")
    print(f"  CPT(50%) {seeds_line([r['cpt50'] for r in results])}; random router 0.500")
    out["cost"] = results


def latency(vectors: Vectors, model: Model, out: dict[str, Any]) -> None:
    rows = [text_row(q["question"]) for q in jsonl(DATA / "mmlu-pro-correctness/questions.jsonl")[:300]]
    vecs = vectors(rows)
    for v, r in zip(vecs[:20], rows[:20], strict=True):
        model.predict(v, r.text)
    model_ms = []
    for v, r in zip(vecs, rows, strict=True):
        t0 = time.perf_counter()
        model.predict(v, r.text)
        model_ms.append((time.perf_counter() - t0) * 1000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "domain.npz"
        model.encoder_max_tokens = encoder_max_tokens(vectors.encoder)
        model.save(path)
        size = path.stat().st_size
        strategy = ClassifierStrategy("bench", ClassifierConfig(artifact=str(path)), vectors.encoders)
    routes = model.labels

    async def decisions() -> list[float]:
        await strategy.start()
        ms = []
        for r in rows:
            body = {"messages": [{"role": "user", "content": r.text}]}
            ctx = RequestContext("bench", body, "auto", False, features=Features(body))
            t0 = time.perf_counter()
            await strategy.decide(ctx, routes)
            ms.append((time.perf_counter() - t0) * 1000)
        return ms

    full_ms = asyncio.run(decisions())
    q = statistics.quantiles
    print(f"\n== Latency per decision, 14-way model ({len(rows)} MMLU-Pro questions, artifact {size / 1e6:.1f} MB)")
    print(f"  model alone (n-grams + dot products): p50 {statistics.median(model_ms):.3f} ms, "
          f"p99 {q(model_ms, n=100)[98]:.3f} ms")  # fmt: skip
    print(f"  whole strategy incl. USE embedding:   p50 {statistics.median(full_ms):.2f} ms, "
          f"p99 {q(full_ms, n=100)[98]:.2f} ms")  # fmt: skip
    out["latency_ms"] = {"model_p50": statistics.median(model_ms), "model_p99": q(model_ms, n=100)[98],
                         "strategy_p50": statistics.median(full_ms), "strategy_p99": q(full_ms, n=100)[98],
                         "artifact_bytes": size}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="domain,belle,cost,latency", help="sections, comma-separated")
    ap.add_argument("--seeds", default="0,1,2", help="holdout split seeds (default 0,1,2)")
    ap.add_argument("--belle-seeds", default="0,1,2,3,4", help="BELLE is small: more splits (default 0-4)")
    ap.add_argument("--cache", default="/tmp/turnout-bench-cache", help="USE vector cache directory")
    ap.add_argument("--json", help="also write every number to this file")
    ap.add_argument("--runtime", default="onnxruntime", help="the USE encoder's `runtime` (onnxruntime-int8, numpy)")
    a = ap.parse_args(argv)
    only = set(a.only.split(","))
    seeds = [int(s) for s in a.seeds.split(",")]
    vectors = Vectors(Path(a.cache), a.runtime)
    out: dict[str, Any] = {}
    model = None
    if "domain" in only or "latency" in only:
        model = domain(vectors, seeds if "domain" in only else seeds[:1], out)
    if "belle" in only:
        belle(vectors, [int(s) for s in a.belle_seeds.split(",")], out)
    if "cost" in only:
        cost(vectors, seeds, out)
    if "latency" in only and model is not None:
        latency(vectors, model, out)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
