"""`turnout eval`: real configs, the bundled USE encoder, real decisions; the CLI as a user runs it."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from turnout.config import Settings, load_config
from turnout.evaluate import (
    Case,
    EvalError,
    Progress,
    build_report,
    decide_cases,
    percentile,
    read_cases,
    render,
    sweep_curve,
)
from turnout.gateway import Gateway
from turnout.types import Decision

LITE_UTTERANCES = [
    "hi there, how are you?",
    "what's the capital of France?",
    "translate good morning into Spanish",
    "give me a synonym for happy",
    "你好，今天怎么样？",
    "法国的首都是哪里？",
    "给我几个开心的近义词",
]
DEEP_UTTERANCES = [
    "prove that there are infinitely many primes",
    "design a distributed rate limiter and explain the trade-offs",
    "analyze the time complexity of this algorithm step by step",
    "derive the gradient of the softmax cross-entropy loss",
    "证明根号二是无理数",
    "设计一个分布式限流系统并分析权衡",
    "一步一步分析这个算法的时间复杂度",
]


def config_tree(runtime_dir: Path, threshold: float = 0.28, deep_threshold: float | None = None) -> dict[str, Any]:
    """Routes `lite` and `deep` with bilingual utterances; router `auto`: an escalation rule, then semantic."""
    deep: dict[str, Any] = {"targets": ["big"], "utterances": DEEP_UTTERANCES}
    if deep_threshold is not None:
        deep["threshold"] = deep_threshold
    return {
        "runtime_dir": str(runtime_dir),
        "upstreams": {"local": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"small": {"upstream": "local", "name": "small"}, "big": {"upstream": "local", "name": "big"}},
        "routes": {"lite": {"targets": ["small"], "utterances": LITE_UTTERANCES}, "deep": deep},
        "routers": {
            "auto": {
                "routes": ["lite", "deep"],
                "strategies": ["rules", "semantic"],
                "fallback": "lite",
                "rules": [{"name": "outage", "route": "deep", "keywords": ["production outage", "线上故障"]}],
                "semantic": {"threshold": threshold, "margin": 0.03},
            }
        },
    }


def write_config(path: Path, tree: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text}]


# 20 labelled cases, 11 English and 9 Chinese. With threshold 0.28, the two "explain in depth" requests
# score too low for `deep` (0.19 and 0.22) and fall back to `lite`: the only two mistakes.
LABELLED: list[dict[str, Any]] = [
    {"text": "hello, how are you today?", "label": "lite"},
    {"text": "what is the capital of Japan?", "label": "lite"},
    {"messages": user("translate thank you into French"), "label": "lite"},
    {"text": "give me a synonym for big", "label": "lite"},
    {"text": "write a haiku about the sea", "label": "lite"},
    {"text": "prove that the square root of two is irrational", "label": "deep"},
    {"text": "design a scalable message queue and discuss the trade-offs", "label": "deep"},
    {"text": "analyze the complexity of merge sort step by step", "label": "deep"},
    {"messages": user("derive the formula for the variance of a binomial distribution"), "label": "deep"},
    {"text": "explain how a transformer neural network works in depth", "label": "deep"},
    {"text": "we have a production outage, what should we do", "label": "deep"},
    {"text": "你好，最近怎么样？", "label": "lite"},
    {"text": "日本的首都是哪里？", "label": "lite"},
    {"text": "给我几个“大”的近义词", "label": "lite"},
    {"text": "写一首关于大海的短诗", "label": "lite"},
    {"text": "证明素数有无穷多个", "label": "deep"},
    {"text": "设计一个高可用的消息队列并分析权衡", "label": "deep"},
    {"text": "推导二项分布方差的公式", "label": "deep"},
    {"text": "详细解释神经网络的反向传播原理", "label": "deep"},
    {"text": "线上故障了怎么办", "label": "deep"},
]

HARD = {"lite": 0, "deep": 1}  # only the strong route answers well
EASY = {"lite": 1, "deep": 1}  # both do
# Three hard and five easy requests; the semantic score of `deep` minus `lite` puts every hard one above
# every easy one, so the sweep is a perfect ranking: APGR = 1 - 3/16, CPT(50%) = 3/16.
OUTCOMES: list[dict[str, Any]] = [
    {"text": "prove that the square root of two is irrational", "outcomes": HARD},
    {"text": "证明素数有无穷多个", "outcomes": HARD},
    {"text": "推导二项分布方差的公式", "outcomes": HARD},
    {"text": "hello, how are you today?", "outcomes": EASY},
    {"text": "what is the capital of Japan?", "outcomes": EASY},
    {"text": "你好，最近怎么样？", "outcomes": EASY},
    {"text": "给我几个“大”的近义词", "outcomes": EASY},
    {"text": "give me a synonym for big", "outcomes": EASY},
]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    d = tmp_path_factory.mktemp("eval")
    return load_config(write_config(d / "turnout.yaml", config_tree(d / "runtime")))[0]


@pytest.fixture(scope="module")
def gateway(settings: Settings) -> Iterator[Gateway]:
    """One started gateway for the module: loading USE and embedding the utterances takes a second or two."""
    gw = Gateway(settings, {})
    asyncio.run(gw.start())
    yield gw
    asyncio.run(gw.close())


def decide(gateway: Gateway, cases: list[Case], exhaustive: bool = False) -> list[Decision]:
    return asyncio.run(decide_cases(gateway, "auto", cases, exhaustive))


def load(tmp_path: Path, rows: list[dict[str, Any]]) -> list[Case]:
    return read_cases(write_jsonl(tmp_path / "data.jsonl", rows), ["lite", "deep"], "auto")


def test_report_counts_accuracy_per_label_and_language_and_the_confusion_matrix(
    tmp_path: Path, settings: Settings, gateway: Gateway
) -> None:
    cases = load(tmp_path, LABELLED)
    report = build_report(cases, decide(gateway, cases), settings.routers["auto"])
    assert (report["cases"], report["labelled"], report["correct"]) == (20, 20, 18)
    assert report["accuracy"] == 0.9
    assert report["per_label"] == {
        "lite": {"n": 9, "correct": 9, "accuracy": 1.0},
        "deep": {"n": 11, "correct": 9, "accuracy": 9 / 11},
    }
    assert report["per_language"] == {
        "en": {"n": 11, "correct": 10, "accuracy": 10 / 11},
        "zh": {"n": 9, "correct": 8, "accuracy": 8 / 9},
    }
    assert report["confusion"] == {"lite": {"lite": 9, "deep": 0}, "deep": {"lite": 2, "deep": 9}}
    assert [(m["line"], m["decided"], m["strategy"]) for m in report["misrouted"]] == [
        (10, "lite", "fallback"),
        (19, "lite", "fallback"),
    ]
    assert {s: v["n"] for s, v in report["strategies"].items()} == {"semantic": 14, "fallback": 4, "rules": 2}
    assert report["route_shares"] == {"lite": 11 / 20, "deep": 9 / 20}
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] and lat["exhaustive"] is False
    assert report["quality"] is None and report["sweep"] is None


def test_a_given_lang_is_kept_and_a_missing_one_is_detected(tmp_path: Path) -> None:
    rows = [{"text": "你好", "label": "lite"}, {"text": "hello there", "label": "lite", "lang": "en-GB"}]
    assert [c.lang for c in load(tmp_path, rows)] == ["zh", "en-GB"]


def test_outcomes_give_quality_against_traffic_share_and_the_sweep_its_apgr(
    tmp_path: Path, settings: Settings, gateway: Gateway
) -> None:
    cases = load(tmp_path, OUTCOMES)
    decisions = decide(gateway, cases, exhaustive=True)
    assert all(len(d.trace) == 2 for d in decisions)  # every strategy ran and was recorded
    report = build_report(cases, decisions, settings.routers["auto"], strong="deep", cheap="lite",
                          sweep="semantic", exhaustive=True)  # fmt: skip
    q = report["quality"]
    assert q["router"] == {"quality": 1.0, "shares": {"lite": 5 / 8, "deep": 3 / 8}, "pgr": 1.0}
    assert q["baselines"]["all-lite"]["quality"] == 3 / 8 * 0 + 5 / 8
    assert q["baselines"]["all-deep"]["quality"] == 1.0
    s = report["sweep"]
    assert (s["cases"], s["unscored"], s["quality_cheap"], s["quality_strong"]) == (8, 0, 5 / 8, 1.0)
    assert s["apgr"] == pytest.approx(1 - 3 / 16)
    assert s["cpt50"] == pytest.approx(3 / 16)
    assert s["random"] == {"apgr": 0.5, "cpt50": 0.5}
    shares = [p["strong_share"] for p in s["points"]]
    assert shares == [k / 8 for k in range(9)]
    assert [p["pgr"] for p in s["points"]][:4] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    text = render({"router": "auto", "data": "d.jsonl", **report})
    assert "APGR 0.812 (random router 0.500)   CPT(50%) 18.8% (random router 50.0%)" in text
    assert "the router recovers 100.0% of the quality gap with 37.5% strong calls" in text


def test_sweep_apgr_and_cpt_on_hand_made_scores() -> None:
    outcomes = [HARD, HARD, EASY, EASY]
    perfect = sweep_curve([0.9, 0.8, 0.1, 0.2], outcomes, "deep", "lite")
    assert (perfect["apgr"], perfect["cpt50"]) == (0.75, 0.25)
    reversed_ = sweep_curve([0.1, 0.2, 0.9, 0.8], outcomes, "deep", "lite")
    assert (reversed_["apgr"], reversed_["cpt50"]) == (0.25, 0.75)
    tied = sweep_curve([0.5, 0.5, 0.5, 0.5], outcomes, "deep", "lite")  # one jump: a random router's line
    assert [p["strong_share"] for p in tied["points"]] == [0.0, 1.0]
    assert (tied["apgr"], tied["cpt50"]) == (0.5, 0.5)
    unscored = sweep_curve([None, 0.8, 0.1, 0.2], outcomes, "deep", "lite")  # no score: strong last
    assert unscored["unscored"] == 1 and unscored["points"][-1]["threshold"] is None
    assert unscored["apgr"] == pytest.approx(0.5)  # 0, 1/2, 1/2, 1/2, 1 at shares 0, 1/4 ... 1
    same = sweep_curve([0.9, 0.1], [EASY, EASY], "deep", "lite")
    assert same["apgr"] is None and "not better" in same["note"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a list"]', "line 2: expected a JSON object, got list"),
        ('{"label": "lite"}', "line 2: needs `messages` (chat messages) or `text`"),
        ('{"text": "hi"}', "line 2: needs `label` (the expected route) or `outcomes`"),
        ('{"text": "hi", "label": "huge"}', "line 2: label 'huge' is not a route of router `auto` (`lite`, `deep`)"),
        ('{"messages": [], "label": "lite"}', "line 2: `messages` must be a non-empty list"),
        (
            '{"text": "hi", "outcomes": {"lite": 1}}',
            "line 2: `outcomes` needs every route of router `auto`; missing `deep`",
        ),
        ('{"text": "hi", "outcomes": {"lite": 1, "deep": "good"}}', "line 2: outcome for `deep` must be a number"),
    ],
)
def test_a_malformed_line_is_an_error_naming_it(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine", "label": "lite"}\n' + line + "\n")
    with pytest.raises(EvalError) as info:
        read_cases(path, ["lite", "deep"], "auto")
    assert info.value.message.startswith(message)


def test_a_missing_or_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match=r"cannot read data file `.*nope\.jsonl`: No such file or directory"):
        read_cases(tmp_path / "nope.jsonl", ["lite"], "auto")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(EvalError, match="has no cases"):
        read_cases(tmp_path / "empty.jsonl", ["lite"], "auto")


def test_limit_reads_only_the_first_cases(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*LABELLED[:3], {"broken": True}])
    assert [c.line for c in read_cases(path, ["lite", "deep"], "auto", limit=3)] == [1, 2, 3]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([7.0], 99) == 7.0


def test_progress_bar_draws_on_request_and_stays_quiet_off_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(3, "eval", stream=out, enabled=True)
    for _ in range(3):
        bar.advance()
    bar.close()
    assert out.getvalue().endswith("] 3/3 " + out.getvalue().rsplit(" 3/3 ", 1)[1])
    assert "\reval [##############################] 3/3" in out.getvalue() and out.getvalue().endswith("s\n")
    quiet = io.StringIO()  # not a TTY
    bar = Progress(3, "eval", stream=quiet)
    bar.advance()
    bar.close()
    assert quiet.getvalue() == ""


# --- the command, as a user runs it ------------------------------------------------------------------


def turnout(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turnout", *args], capture_output=True, text=True, timeout=120)


def test_eval_command_prints_one_json_object_with_the_sweep(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "turnout.yaml", config_tree(tmp_path / "runtime"))
    data = write_jsonl(tmp_path / "data.jsonl", LABELLED + OUTCOMES)
    done = turnout("eval", str(data), "--config", str(cfg), "--router", "auto", "--json", "--sweep")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # exactly one object: anything else fails to parse
    assert (report["router"], report["cases"], report["labelled"], report["correct"]) == ("auto", 28, 20, 18)
    assert report["confusion"] == {"lite": {"lite": 9, "deep": 0}, "deep": {"lite": 2, "deep": 9}}
    assert report["latency_ms"]["exhaustive"] is True
    assert report["quality"]["strong"] == "deep" and report["quality"]["cheap"] == "lite"
    assert report["sweep"]["apgr"] == pytest.approx(1 - 3 / 16)
    assert done.stderr == ""  # no progress bar: stderr is not a terminal


def test_eval_command_text_report_and_its_errors(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "turnout.yaml", config_tree(tmp_path / "runtime"))
    data = write_jsonl(tmp_path / "data.jsonl", LABELLED)
    done = turnout("eval", str(data), "--config", str(cfg), "--progress")
    assert done.returncode == 0, done.stderr
    assert "accuracy  0.900  (18/20)" in done.stdout
    assert "expected \\ decided  lite  deep\nlite                9     0\ndeep                2     9" in done.stdout
    assert "line 10: expected `deep`, decided `lite` (fallback)" in done.stdout
    assert "decision latency  p50 " in done.stdout
    assert "] 20/20 " in done.stderr  # the progress bar, asked for
    with data.open("a") as f:
        f.write("{oops\n")
    bad = turnout("eval", str(data), "--config", str(cfg))
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.startswith("turnout: line 21: not valid JSON")
    missing = turnout("eval", str(tmp_path / "missing.jsonl"), "--config", str(cfg), "--sweep")
    assert missing.returncode == 2
    assert "cannot read data file" in missing.stderr and "No such file or directory" in missing.stderr
