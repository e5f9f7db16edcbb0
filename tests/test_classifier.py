"""The classifier strategy: artifacts trained on the real bundled encoder, loaded from real files."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import GatewayFactory
from tests.test_config import minimal
from turnout.config import ClassifierConfig, EncoderConfig, validate
from turnout.encoders import EmbeddingCache, EncoderSet
from turnout.errors import ClassificationFailed, ConfigError
from turnout.features import Features
from turnout.router import Resources, Router, build_routers
from turnout.sessions import SessionRoutes
from turnout.strategies.classifier import (
    ANALYZERS,
    HASHERS,
    ClassifierStrategy,
    cost_choice,
    encoder_max_tokens,
    good_enough,
    load_model,
    term_hashes,
)
from turnout.training import Row, embed, text_of, train
from turnout.types import RequestContext

EXAMPLES = {
    "math": [
        "Solve for x: 2x + 7 = 19",
        "What is the derivative of x^3 * sin(x)?",
        "Compute the integral of 1/(1+x^2) from 0 to 1",
        "Prove that the square root of 2 is irrational",
        "Find the eigenvalues of the matrix [[2, 1], [1, 2]]",
        "How many ways can 5 people sit around a round table?",
        "求解方程 x^2 - 5x + 6 = 0",
        "计算 1 到 100 所有整数的和",
        "What is the probability of rolling two sixes with two dice?",
        "Simplify (a+b)^2 - (a-b)^2",
    ],
    "code": [
        "Write a Python function that reverses a linked list",
        "Why does my JavaScript fetch call return a pending promise?",
        "Fix this SQL query: SELECT name FROM users WHERE id = ",
        "How do I read a JSON file in Rust?",
        "Explain the difference between a process and a thread in Go",
        "用Python写一个快速排序函数",
        "这段Java代码为什么报空指针异常",
        "Write a bash script that renames every .txt file to .md",
        "Refactor this class to use dependency injection in TypeScript",
        "How do I undo the last git commit but keep my changes?",
    ],
    "chat": [
        "Hi, how are you today?",
        "What is a good name for a golden retriever puppy?",
        "Recommend a movie for a rainy Sunday",
        "Tell me a fun fact about octopuses",
        "What should I cook for dinner tonight?",
        "你好，今天天气怎么样？",
        "推荐一本适合周末读的小说",
        "Thanks, that was helpful!",
        "What are some fun things to do in Lisbon?",
        "Write a short birthday message for my sister",
    ],
}
HARD = [
    "Prove the Cauchy-Schwarz inequality for inner product spaces",
    "Derive the closed form of the Fibonacci sequence using generating functions",
    "Analyse the time complexity of Dijkstra's algorithm with a binary heap and prove it",
    "Design a lock-free concurrent queue and argue its linearizability",
    "Prove that every planar graph is five-colourable",
    "证明素数有无穷多个",
    "Derive the Black-Scholes equation from first principles",
    "Explain and prove the master theorem for divide-and-conquer recurrences",
]
EASY = [
    "What is 2 + 2?",
    "What is the capital of France?",
    "Say hello in Spanish",
    "What colour is the sky?",
    "How many days are in a week?",
    "你好",
    "Spell the word banana",
    "What is the opposite of hot?",
]


def rows_of(table: dict[str, list[str]]) -> list[Row]:
    bodies = [({"messages": [{"role": "user", "content": t}]}, label) for label, ts in table.items() for t in ts]
    return [Row(0, text_of(body), label) for body, label in bodies]


def cost_rows() -> list[Row]:
    rows = [Row(0, t, outcomes={"lite": 0.0, "deep": 1.0}) for t in HARD]
    return rows + [Row(0, t, outcomes={"lite": 1.0, "deep": 1.0}) for t in EASY]


@pytest.fixture(scope="module")
def encoders() -> Iterator[EncoderSet]:
    broken = EncoderConfig(kind="sentence-transformers", path="/nonexistent/model")
    enc = EncoderSet({"default": EncoderConfig(threads=1), "broken": broken, "long": EncoderConfig(max_tokens=512)}, {})
    yield enc
    asyncio.run(enc.close())


def vectors(encoders: EncoderSet, rows: list[Row]) -> np.ndarray:
    return asyncio.run(embed(encoders.get("default"), [r.text for r in rows]))


@pytest.fixture(scope="module")
def category_artifact(encoders: EncoderSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = rows_of(EXAMPLES)
    model = train(rows, vectors(encoders, rows), encoders.get("default").id, holdout=0).model
    model.encoder_max_tokens = encoder_max_tokens(encoders.get("default"))
    path = tmp_path_factory.mktemp("artifacts") / "category.npz"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def cost_artifact(encoders: EncoderSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = cost_rows()
    model = train(rows, vectors(encoders, rows), encoders.get("default").id, holdout=0).model
    model.encoder_max_tokens = encoder_max_tokens(encoders.get("default"))
    path = tmp_path_factory.mktemp("artifacts") / "cost.npz"
    model.save(path)
    return path


def ctx_for(text: str) -> RequestContext:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    return RequestContext("id", body, "auto", False, features=Features(body))


def strategy(path: Path, encoders: EncoderSet, **cfg: Any) -> ClassifierStrategy:
    return ClassifierStrategy("auto", ClassifierConfig(artifact=str(path), **cfg), encoders)


def rewrite(src: Path, dst: Path, **changes: Any) -> Path:
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update({k: np.array(v) for k, v in changes.items()})
    np.savez(dst, **arrays)
    return dst


# --- category mode -------------------------------------------------------------------------


def test_category_strategy_proposes_the_most_likely_route_with_its_probabilities(
    category_artifact: Path, encoders: EncoderSet
) -> None:
    s = strategy(category_artifact, encoders)
    routes = ("math", "code", "chat")
    for text, expected in [("Integrate x^2 * e^x dx", "math"), ("用Python写一个函数计算斐波那契数列", "code"),
                           ("Any tips for a first date?", "chat")]:  # fmt: skip
        d = asyncio.run(s.decide(ctx_for(text), routes))
        assert d is not None and (d.route, d.strategy) == (expected, "classifier"), text
        assert set(d.scores) == set(routes) and abs(sum(d.scores.values()) - 1) < 1e-3
        assert d.confidence == max(d.scores.values())
        assert d.provenance and d.provenance[0].startswith("artifact:")


def test_category_strategy_shares_the_request_embedding(category_artifact: Path, encoders: EncoderSet) -> None:
    ctx = ctx_for("Solve 3x = 12")
    asyncio.run(strategy(category_artifact, encoders).decide(ctx, ("math", "code", "chat")))
    assert ctx.features is not None and list(ctx.features._embeddings) == ["default"]


def test_router_holds_category_proposals_to_threshold_and_margin(category_artifact: Path, encoders: EncoderSet) -> None:
    raw = minimal()
    raw["routes"] = {r: {"targets": ["small"]} for r in ("math", "code", "chat")}
    raw["routers"] = {"auto": {"routes": ["math", "code", "chat"], "fallback": "chat", "strategies": ["classifier"],
                               "classifier": {"artifact": str(category_artifact), "threshold": 0.999}}}  # fmt: skip
    cfg = validate(raw, {}).routers["auto"]
    assert cfg.classifier is not None
    router = Router("auto", cfg, [ClassifierStrategy("auto", cfg.classifier, encoders)], SessionRoutes())
    d = asyncio.run(router.decide(ctx_for("Solve for y: 4y - 2 = 10")))
    assert (d.route, d.strategy, d.threshold) == ("chat", "fallback", 0.999)
    assert d.trace[0]["verdict"] == "below_threshold" and d.trace[0]["route"] == "math"


def test_labels_that_are_not_routes_are_a_config_error_at_load(
    category_artifact: Path, encoders: EncoderSet, tmp_path: Path
) -> None:
    raw = minimal()
    raw["routes"] = {r: {"targets": ["small"]} for r in ("math", "lite")}
    raw["routers"] = {"auto": {"routes": ["math", "lite"], "fallback": "lite", "strategies": ["classifier"],
                               "classifier": {"artifact": str(category_artifact)}}}  # fmt: skip
    settings = validate(raw, {})
    with pytest.raises(ConfigError, match=r"classifier.artifact: classifier labels `chat`, `code` are not routes"):
        build_routers(settings, Resources(settings, encoders, EmbeddingCache(tmp_path), {}))


def test_labels_that_are_not_routes_fail_open_with_a_clear_code(category_artifact: Path, encoders: EncoderSet) -> None:
    s = strategy(category_artifact, encoders)
    with pytest.raises(ClassificationFailed, match="classifier labels `chat`, `code` are not routes") as exc:
        asyncio.run(s.decide(ctx_for("hello"), ("math", "lite")))
    assert exc.value.code == "labels_not_routes"


def test_a_broken_encoder_fails_open(encoders: EncoderSet, tmp_path: Path, category_artifact: Path) -> None:
    broken_id = encoders.get("broken").id
    cap = encoder_max_tokens(encoders.get("broken"))
    path = rewrite(category_artifact, tmp_path / "broken.npz", encoder_id=broken_id, encoder_max_tokens=cap)
    s = strategy(path, encoders, encoder="broken")
    with pytest.raises(ClassificationFailed) as exc:
        asyncio.run(s.decide(ctx_for("hello"), ("math", "code", "chat")))
    assert exc.value.code == "encoder_error"


def test_an_empty_text_abstains(category_artifact: Path, encoders: EncoderSet) -> None:
    assert asyncio.run(strategy(category_artifact, encoders).decide(ctx_for("   "), ("math", "code", "chat"))) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a",
        "Hello,  World!\n2x + 3 = 9",
        "你好，世界。今天天气怎么样？",
        "x\u00a0y\tz  w",
        "straße İstanbul 😀",
        "ab " * 40,
    ],
)
def test_hashed_ngrams_are_exactly_the_string_ngrams_training_counted(text: str) -> None:
    for kind, (lo, hi) in [("chars", (2, 4)), ("chars", (1, 5)), ("words", (1, 3)), ("head", (1, 3))]:
        grams = ANALYZERS[kind](text, lo, hi)
        assert sorted(term_hashes(grams).tolist()) == sorted(HASHERS[kind](text, lo, hi).tolist()), (kind, lo, hi)


# --- loading -------------------------------------------------------------------------------


def test_artifact_is_a_plain_npz_with_its_provenance(category_artifact: Path) -> None:
    with np.load(category_artifact, allow_pickle=False) as data:
        assert int(data["format_version"]) == 1 and str(data["mode"]) == "category"
        assert sorted(data["labels"].tolist()) == ["chat", "code", "math"]
        assert str(data["encoder_id"]) == "use-multilingual-v3-spm"
    model = load_model(category_artifact)
    assert model.metadata["rows"] == 30 and model.metadata["trained_at"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", r"artifact `.*nope.npz` does not exist; retrain it with `turnout train"),
        ("garbage", r"cannot read artifact `.*garbage.npz`"),
        ("version", r"has format version 99; this turnout reads version 1"),
        ("encoder", r"trained on encoder `other-encoder`, but encoder `default` is `use-multilingual-v3-spm`"),
        ("labels", r"is inconsistent \(weights do not match the labels\)"),
    ],
)
def test_bad_artifacts_are_config_errors_that_name_the_key_and_the_fix(
    change: str, message: str, category_artifact: Path, encoders: EncoderSet, tmp_path: Path
) -> None:
    path = tmp_path / "nope.npz"
    if change == "garbage":
        path = tmp_path / "garbage.npz"
        path.write_bytes(b"not a zip file at all")
    elif change == "version":
        rewrite(category_artifact, path, format_version=99)
    elif change == "encoder":
        rewrite(category_artifact, path, encoder_id="other-encoder")
    elif change == "labels":
        rewrite(category_artifact, path, labels=["math", "code"])
    with pytest.raises(ConfigError, match=message) as exc:
        strategy(path, encoders)
    assert exc.value.message.startswith("routers.auto.classifier.")


def test_an_encoder_input_cap_other_than_at_training_is_a_config_error(
    category_artifact: Path, encoders: EncoderSet
) -> None:
    assert load_model(category_artifact).encoder_max_tokens == 48
    with pytest.raises(ConfigError, match=r"input capped at 48 tokens, but `encoders\.long\.max_tokens` gives 512"):
        strategy(category_artifact, encoders, encoder="long")


def test_an_undefined_encoder_is_a_config_error(category_artifact: Path, encoders: EncoderSet) -> None:
    with pytest.raises(ConfigError, match=r"routers\.auto\.classifier\.encoder: encoder `nope` is not defined"):
        strategy(category_artifact, encoders, encoder="nope")


# --- cost mode -----------------------------------------------------------------------------


def test_good_enough_and_cost_choice_pick_the_cheapest_route_that_clears_the_threshold() -> None:
    quality = np.array([0.2, 0.9, 0.95])  # lite, mid, deep: P(answer is good)
    enough = good_enough(quality)
    assert enough == pytest.approx([1 - 0.8 * 0.95, 1 - 0.1 * 0.95, 1.0])
    assert cost_choice(quality, 0.5) == (1, pytest.approx(0.905))
    assert cost_choice(quality, 0.2) == (0, pytest.approx(0.24))
    assert cost_choice(quality, 0.99) == (2, pytest.approx(1 - 0.905))


def test_cost_strategy_applies_its_own_threshold(cost_artifact: Path, encoders: EncoderSet) -> None:
    s = strategy(cost_artifact, encoders, threshold=0.6)
    assert s.policy == (None, None) and s.model.labels == ("lite", "deep")
    routes = ("lite", "deep")
    hard = asyncio.run(s.decide(ctx_for("Prove that there is no largest prime number"), routes))
    easy = asyncio.run(s.decide(ctx_for("What is the capital of Spain?"), routes))
    assert hard is not None and easy is not None
    assert set(hard.scores) == {"lite", "deep"} and hard.scores["lite"] < easy.scores["lite"]
    assert (hard.route, easy.route) == ("deep", "lite")
    assert "cheapest route good enough" in easy.reason
    cheap_always = strategy(cost_artifact, encoders, threshold=0.0)
    d = asyncio.run(cheap_always.decide(ctx_for("Prove that there is no largest prime number"), routes))
    assert d is not None and d.route == "lite"


def test_router_does_not_apply_the_threshold_twice_in_cost_mode(cost_artifact: Path, encoders: EncoderSet) -> None:
    raw = minimal()
    raw["routes"]["deep"] = {"targets": ["small"]}
    raw["routers"] = {"auto": {"routes": ["lite", "deep"], "fallback": "lite", "strategies": ["classifier"],
                               "classifier": {"artifact": str(cost_artifact), "threshold": 1.0}}}  # fmt: skip
    cfg = validate(raw, {}).routers["auto"]
    assert cfg.classifier is not None
    router = Router("auto", cfg, [ClassifierStrategy("auto", cfg.classifier, encoders)], SessionRoutes())
    d = asyncio.run(router.decide(ctx_for("What is 1 + 1?")))
    assert (d.route, d.strategy, d.threshold, d.margin) == ("deep", "classifier", None, None)


# --- end to end ----------------------------------------------------------------------------


def test_route_endpoint_decides_with_the_classifier(make_gateway: GatewayFactory, category_artifact: Path) -> None:
    gw = make_gateway(
        routes={r: {"targets": ["lite-model"]} for r in ("math", "code", "chat")},
        routers={"auto": {"routes": ["math", "code", "chat"], "fallback": "chat",
                          "strategies": ["explicit", "classifier"],
                          "classifier": {"artifact": str(category_artifact), "threshold": 0.4}}},
    )  # fmt: skip
    body = {"model": "auto", "messages": [{"role": "user", "content": "What is the integral of cos(x)?"}]}
    r = httpx.post(gw.url + "/v1/route", json=body, timeout=10)
    assert r.status_code == 200, r.text
    d = r.json()["decision"]
    assert (d["route"], d["strategy"], d["threshold"]) == ("math", "classifier", 0.4)
    assert d["confidence"] >= 0.4 and set(d["scores"]) == {"math", "code", "chat"}
