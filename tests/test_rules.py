"""The rules strategy: phrase banks, regexes and conditions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from turnout.config import RuleConfig
from turnout.features import Features
from turnout.strategies.rules import PhraseMatcher, RulesStrategy
from turnout.types import RequestContext

ESCALATE = [RuleConfig(name=n, route="deep", banks=[n])
            for n in ("security_incident", "leaked_credentials", "production_outage", "data_loss")]  # fmt: skip


def decide(rules: list[RuleConfig], text: str, **extra: Any) -> tuple[str, str] | None:
    body = {"messages": [{"role": "user", "content": text}], **extra}
    ctx = RequestContext("id", body, "auto", False, features=Features(body))
    d = asyncio.run(RulesStrategy("auto", rules).decide(ctx, ("lite", "deep")))
    return None if d is None else (d.route, d.reason)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("Production is down and all requests failing!", "production_outage"),
        ("我们的生产环境挂了，用户无法登录", "production_outage"),
        ("I think we've been hacked, there is ransomware on a server", "security_incident"),
        ("服务器被入侵了，怎么办", "security_incident"),
        ("oops, we leaked our AWS keys in a public repo", "leaked_credentials"),
        ("我不小心把API密钥泄露到GitHub上了", "leaked_credentials"),
        ("someone accidentally deleted production data", "data_loss"),
        ("昨天误删了数据库里的订单表", "data_loss"),
    ],
)
def test_default_escalation_banks_match_english_and_chinese(text: str, rule: str) -> None:
    assert decide(ESCALATE, text) == ("deep", f"rule `{rule}` matched (keyword)")


@pytest.mark.parametrize(
    "text",
    [
        "fix this bug in my deploy script",
        "refactor the error handling in this function",
        "how do I store API keys safely?",
        "what's a product manager?",
        "write a story about a power cut in a small town",
    ],
)
def test_ordinary_engineering_words_do_not_escalate(text: str) -> None:
    assert decide(ESCALATE, text) is None


def test_latin_phrases_match_whole_words_only() -> None:
    p = PhraseMatcher(["prod is down", "sev-1", "ddos"])
    assert p.search("PROD IS DOWN again") and not p.search("product is downloaded")
    assert p.search("this is a SEV-1!") and not p.search("sev 12") and p.search("a DDoS, again")
    assert PhraseMatcher(["删库"]).search("昨天删库跑路了") and not PhraseMatcher([]).search("anything")


def test_regexes_and_conditions() -> None:
    rules = [
        RuleConfig(name="tools", route="deep", has_tools=True),
        RuleConfig(name="long", route="deep", min_tokens=1000),
        RuleConfig(name="zh-effort", route="deep", languages=["zh"], reasoning_effort=["high"]),
        RuleConfig(name="ticket", route="deep", regex=[r"\bINC-\d{4,}\b"]),
    ]
    assert decide(rules, "hi", tools=[{"type": "function"}]) == ("deep", "rule `tools` matched (conditions)")
    assert decide(rules, "word " * 1000) == ("deep", "rule `long` matched (conditions)")
    assert decide(rules, "你好", reasoning_effort="high") == ("deep", "rule `zh-effort` matched (conditions)")
    assert decide(rules, "你好", reasoning_effort="low") is None
    assert decide(rules, "see inc-20431 for context") == ("deep", "rule `ticket` matched (regex)")
    assert decide(rules, "hello") is None


def test_first_matching_rule_wins() -> None:
    rules = [RuleConfig(name=n, route=r, keywords=["hello"]) for n, r in (("a", "lite"), ("b", "deep"))]
    assert decide(rules, "hello") == ("lite", "rule `a` matched (keyword)")
