"""What routing reads from a request, computed once and shared by every strategy.

Text to classify (the latest user turn plus a window of earlier ones, capped head-and-tail), the
detected language, a token estimate, structure (tools, images, turns, tool loop) and cheap intent
signals. The sentence embedding is computed at most once per encoder and shared too.
"""

from __future__ import annotations

import asyncio
import re
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from turnout.numbers import round3

if TYPE_CHECKING:
    from turnout.encoders import EncoderCall

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
SCRIPTS = (
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("zh", CJK),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("hi", re.compile(r"[\u0900-\u097f]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
    ("el", re.compile(r"[\u0370-\u03ff]")),
)
LATIN_STOPWORDS = {
    "es": {"el", "la", "los", "las", "que", "de", "por", "para", "una", "es", "cómo", "qué"},
    "fr": {"le", "la", "les", "des", "est", "une", "que", "pour", "dans", "je", "vous", "comment"},
    "de": {"der", "die", "das", "und", "ist", "nicht", "ein", "eine", "ich", "wie", "mit", "für"},
    "pt": {"o", "os", "as", "que", "de", "para", "uma", "não", "como", "é", "você", "com"},
    "it": {"il", "lo", "gli", "che", "di", "per", "una", "non", "come", "è", "sono", "della"},
    "en": {"the", "a", "is", "and", "of", "to", "in", "what", "how", "you", "i", "for", "that", "this"},
}
WORD = re.compile(r"[a-zA-Zà-ÿ]+")
CODE_WORDS = re.compile(
    r"\b(def|class|import|return|function|const|let|var|public|static|void|async|await|lambda|SELECT|INSERT|"
    r"UPDATE|FROM|WHERE|printf|println|console\.log|std::|#include|Traceback|Exception|stack trace|"
    r"segfault|null pointer|regex|API|SQL|JSON|HTTP|python|javascript|typescript|java|rust|golang|c\+\+|"
    r"kubernetes|docker|bash|git)\b|[{};]\s*$|=>|->|::|\bfn\b|代码|函数|编程|报错|脚本",
    re.IGNORECASE | re.MULTILINE,
)
INTENT_PATTERNS: dict[str, re.Pattern[str]] = {
    "translation": re.compile(
        r"\btranslat\w*|\bin(to)? (english|chinese|french|german|spanish|japanese)\b|翻译|译成|翻成|英文怎么说",
        re.IGNORECASE,
    ),
    "json_extract": re.compile(r"\bjson\b|\bextract\w*|\bparse\b|\bschema\b|提取|抽取|结构化", re.IGNORECASE),
    "deep_reason": re.compile(
        r"\bprove\b|\bproof\b|step[- ]by[- ]step|\banaly[sz]e\b|\bderive\b|\btrade-?offs?\b|\bwhy\b|"
        r"\bcompare\b|\bdesign\b|\barchitect\w*|\boptimi[sz]e\b|证明|推导|分析|为什么|权衡|架构|设计",
        re.IGNORECASE,
    ),
    "safety_risk": re.compile(
        r"ignore (all |the )?(previous|prior|above) (instructions|rules)|\bjailbreak\b|\bDAN\b|developer mode|"
        r"system prompt|without (any )?restrictions|忽略(之前|以上|所有)的?(指令|规则)|越狱|系统提示",
        re.IGNORECASE,
    ),
}


def head_tail(text: str, limit: int) -> tuple[str, bool]:
    """Keep the first and last parts of a long text (where the ask usually is); True when cut."""
    if len(text) <= limit:
        return text, False
    keep = max(2, limit - 3)  # the marker counts too
    head = keep * 2 // 3
    return text[:head] + "\n…\n" + text[len(text) - (keep - head) :], True


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def detect_language(text: str) -> str:
    sample = text[:2000]
    counts = {lang: len(rx.findall(sample)) for lang, rx in SCRIPTS}
    lang, n = max(counts.items(), key=lambda kv: kv[1])
    if n and n >= 0.1 * max(1, len(sample.replace(" ", ""))):
        if lang == "zh" and counts["ja"]:
            return "ja"
        return lang
    words = [w.lower() for w in WORD.findall(sample)]
    if not words:
        return "und"
    scores = {lang: sum(w in stop for w in words) for lang, stop in LATIN_STOPWORDS.items()}
    best = max(scores.items(), key=lambda kv: kv[1])
    return best[0] if best[1] else "en"


def estimate_tokens(text: str) -> int:
    """About one token per CJK character and per 4 other characters. ASCII text has no CJK to look for:
    `isascii` is a flag read, the regex a scan that made a list (~1.1 -> 0.2 us for a short prompt)."""
    if text.isascii():
        return len(text) // 4
    cjk = len(CJK.findall(text))
    return cjk + (len(text) - cjk) // 4


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """A prefetched vector nobody awaited may have failed: read its exception so asyncio does not log it."""
    if not fut.cancelled():
        fut.exception()


class Features:
    """Lazily computed facts about one request; nothing is computed that no strategy asks for."""

    def __init__(self, body: dict[str, Any], window: int = 2, max_chars: int = 2000) -> None:
        self.body = body
        self.window = window
        self.max_chars = max_chars
        self._embeddings: dict[str, np.ndarray] = {}
        self._pending: dict[str, asyncio.Future[Any]] = {}  # started by prefetch, not yet awaited

    @cached_property
    def messages(self) -> list[dict[str, Any]]:
        msgs = self.body.get("messages") or []
        return [m for m in msgs if isinstance(m, dict)]

    @cached_property
    def user_turns(self) -> list[str]:
        return [content_text(m.get("content")) for m in self.messages if m.get("role") == "user"]

    @cached_property
    def _text(self) -> tuple[str, bool]:
        turns = [t for t in self.user_turns if t.strip()]
        if not turns:  # no user text at all: fall back to whatever text the request has
            turns = [content_text(m.get("content")) for m in self.messages][-1:]
        picked = turns[-(self.window + 1) :]
        return head_tail("\n".join(picked), self.max_chars)

    @property
    def text(self) -> str:
        """The text strategies classify: the latest user turn and up to `window` earlier ones."""
        return self._text[0]

    @property
    def truncated(self) -> bool:
        return self._text[1]

    @cached_property
    def language(self) -> str:
        return detect_language(self.text)

    @cached_property
    def tokens(self) -> int:
        return sum(estimate_tokens(content_text(m.get("content"))) for m in self.messages)

    @cached_property
    def has_tools(self) -> bool:
        return bool(self.body.get("tools") or self.body.get("functions"))

    @cached_property
    def has_images(self) -> bool:
        for m in self.messages:
            content = m.get("content")
            if isinstance(content, list) and any(
                isinstance(p, dict) and p.get("type") in ("image_url", "image") for p in content
            ):
                return True
        return False

    @cached_property
    def in_tool_loop(self) -> bool:
        """The last message is a tool result, or an assistant turn that called tools."""
        if not self.messages:
            return False
        last = self.messages[-1]
        role = last.get("role")
        return role in ("tool", "function") or (role == "assistant" and bool(last.get("tool_calls")))

    @cached_property
    def reasoning_effort(self) -> str | None:
        effort = self.body.get("reasoning_effort")
        if effort is None and isinstance(self.body.get("reasoning"), dict):
            effort = self.body["reasoning"].get("effort")
        return effort if isinstance(effort, str) else None

    @cached_property
    def intents(self) -> dict[str, float]:
        """ModelMuxer's intent labels with confidences from cheap heuristics."""
        text = self.text
        out: dict[str, float] = {}
        fences = text.count("```")
        code_hits = len(CODE_WORDS.findall(text))
        if fences or code_hits:
            out["code_gen"] = min(1.0, 0.5 * (fences > 0) + 0.15 * code_hits)
        for label, rx in INTENT_PATTERNS.items():
            hits = len(rx.findall(text))
            if hits:
                out[label] = min(1.0, 0.5 + 0.2 * (hits - 1))
        fmt = self.body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            out["json_extract"] = 1.0
        if self.has_images:
            out["vision"] = 1.0
        if self.reasoning_effort == "high" or self.tokens > 4000:
            out["deep_reason"] = max(out.get("deep_reason", 0.0), 0.7)
        if not out:
            out["chat_lite"] = 0.8 if self.tokens < 200 else 0.5
        return {k: round3(v) for k, v in out.items()}

    def signals(self) -> dict[str, Any]:
        """The features as reported in a decision (never the text itself)."""
        return {
            "lang": self.language,
            "tokens": self.tokens,
            "turns": len(self.user_turns),
            "chars_classified": len(self.text),
            "truncated": self.truncated,
            "has_tools": self.has_tools,
            "has_images": self.has_images,
            "in_tool_loop": self.in_tool_loop,
            "code_fences": self.text.count("```") // 2,
            "reasoning_effort": self.reasoning_effort,
            "intents": self.intents,
        }

    def prefetch(self, encoder: str, call: EncoderCall) -> None:
        """Start computing the text's vector from `encoder` now, so that the strategies before the one
        that needs it (rules, sparse scoring) run while the encoder works on its own thread."""
        if encoder not in self._embeddings and encoder not in self._pending and self.text.strip():
            fut = call.start(self.text)
            fut.add_done_callback(_retrieve)
            self._pending[encoder] = fut

    async def embedding(self, encoder: str, call: EncoderCall) -> np.ndarray:
        """The text's vector from `encoder`, computed at most once per request."""
        vec = self._embeddings.get(encoder)
        if vec is None:
            fut = self._pending.pop(encoder, None) or call.start(self.text)
            vec = self._embeddings[encoder] = await call.finish(fut)
        return vec

    def drop_prefetched(self) -> None:
        """Cancel vectors started for strategies that never ran (an earlier one decided): a job not yet
        begun on the encoder's thread is dropped."""
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()
