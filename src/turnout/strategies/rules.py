"""Hard routing rules: phrase banks, regexes and conditions on request features. First match wins.

Phrases match case-insensitively. Latin-script phrases match on word boundaries; phrases in scripts
written without spaces (Chinese, Japanese, ...) match as substrings. A rule matches when every
condition it sets holds and, if it has phrases or regexes, at least one of them is found.
"""

from __future__ import annotations

import re

from turnout.banks import bank
from turnout.config import RuleConfig
from turnout.features import Features
from turnout.types import Decision, RequestContext

NO_SPACES = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")


def phrase_pattern(phrases: list[str]) -> re.Pattern[str] | None:
    """One alternation for all phrases: word boundaries for spaced scripts, substrings otherwise.
    A phrase written `re:PATTERN` is a regular expression (banks use these for word-order variants)."""
    parts = []
    for p in sorted({p.strip() for p in phrases if p.strip()}, key=len, reverse=True):
        if p.startswith("re:"):
            parts.append(f"(?:{p[3:]})")
            continue
        body = re.escape(p)
        parts.append(body if NO_SPACES.search(p) else rf"(?<!\w){body}(?!\w)")
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


class Rule:
    def __init__(self, cfg: RuleConfig, where: str) -> None:
        self.cfg = cfg
        phrases = list(cfg.keywords)
        for i, name in enumerate(cfg.banks):
            phrases += bank("keywords", name, f"{where}.banks[{i}]")
        self.phrases = phrase_pattern(phrases)
        self.regexes = [re.compile(r, re.IGNORECASE) for r in cfg.regex]

    def conditions_hold(self, f: Features) -> bool:
        c = self.cfg
        return (
            (c.has_tools is None or c.has_tools == f.has_tools)
            and (c.has_images is None or c.has_images == f.has_images)
            and (c.min_tokens is None or f.tokens >= c.min_tokens)
            and (c.max_tokens is None or f.tokens <= c.max_tokens)
            and (c.min_turns is None or len(f.user_turns) >= c.min_turns)
            and (c.languages is None or f.language in c.languages)
            and (c.reasoning_effort is None or f.reasoning_effort in c.reasoning_effort)
        )

    def match(self, f: Features) -> str | None:
        """What matched (`keyword`, `regex` or `conditions`), or None."""
        if not self.conditions_hold(f):
            return None
        if self.phrases is None and not self.regexes:
            return "conditions"
        if self.phrases is not None and self.phrases.search(f.text):
            return "keyword"
        if any(rx.search(f.text) for rx in self.regexes):
            return "regex"
        return None


class RulesStrategy:
    name = "rules"

    def __init__(self, router: str, rules: list[RuleConfig]) -> None:
        self.rules = [Rule(r, f"routers.{router}.rules[{i}]") for i, r in enumerate(rules)]

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None:
        features = ctx.features
        if features is None:
            return None
        for rule in self.rules:
            how = rule.match(features)
            if how is not None:
                name = rule.cfg.name
                reason = f"rule `{name}` matched ({how})"
                return Decision(rule.cfg.route, self.name, confidence=1.0, reason=reason, provenance=[f"rule:{name}"])
        return None
