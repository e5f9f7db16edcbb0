"""The `classifier` strategy: a small linear model trained by `turnout train`, read from an `.npz` artifact.

The model reads the classified text (`Features.text`, extracted exactly as at training time) through
blocks of features, concatenated:

  dense   the sentence embedding from the configured encoder (shared with the semantic strategy)
  chars   TF-IDF over character n-grams inside words; CJK runs count as words (Chinese, typos)
  words   TF-IDF over word unigrams and bigrams
  head    TF-IDF over the character n-grams of the opening characters, where the ask usually is
  shape   length and structure: characters, words, lines, digits, numbers, maths, blanks, code

Each block's scaling is folded into its weights at training time. At routing time the n-grams are
hashed with numpy and looked up in one sorted table; with the embedding known, a decision is a few
small vector operations and dot products (about 0.3 ms on a 2-core machine).

Modes:
  category  one output per route, softmax; the router applies `threshold` and `margin`.
  cost      routes ordered cheap to strong; one sigmoid output per route: P(its answer is good).
            A cheaper route is good enough unless it fails where a stronger one would not:
            P(good enough) = 1 - (1 - P(good)) * max P(good) of the stronger routes.
            The cheapest route whose P(good enough) clears `threshold` answers, else the strongest.
            The threshold is applied here, so `policy` asks the router to apply none. The decision's
            scores are P(good enough) per route (the strongest: 1).

The artifact is a plain `.npz` (no pickles: a pickle runs code when loaded), read with `allow_pickle=False`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from turnout.config import ClassifierConfig
from turnout.encoders import EncoderSet, failing_open
from turnout.errors import ClassificationFailed, ConfigError
from turnout.features import CJK, CODE_WORDS
from turnout.types import Decision, RequestContext

log = logging.getLogger("turnout")

FORMAT_VERSION = 1
MODES = ("category", "cost")

# --- features ---------------------------------------------------------------------------------

_DIGITS = str.maketrans("0123456789", "0000000000")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_MATHS = re.compile(r"[=+\-*/^<>≤≥≠√∫∑∏πθλμσ∞%$\\]")
_BLANK = re.compile(r"_{2,}")


def _normalise(text: str) -> str:
    return _SPACE.sub(" ", text.lower().translate(_DIGITS)).strip()


def char_grams(text: str, lo: int, hi: int) -> list[str]:
    """Character n-grams of each whitespace-separated word, padded with spaces (sklearn's `char_wb`);
    single characters leave the padding out."""
    out: list[str] = []
    for word in _normalise(text).split(" "):
        padded = f" {word} "
        size = len(padded)
        for n in range(lo, min(hi, size) + 1):
            out.extend(word if n == 1 else (padded[i : i + n] for i in range(size - n + 1)))
    return out


def word_grams(text: str, lo: int, hi: int) -> list[str]:
    """Word n-grams; digits read as 0, so numbers generalise."""
    words = _WORD.findall(_normalise(text))
    out: list[str] = []
    for n in range(lo, hi + 1):
        out.extend(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return out


def head_grams(text: str, lo: int, hi: int) -> list[str]:
    """The `char_grams` that start in the opening characters, where the ask usually is ("summarise the...")."""
    padded = f" {_normalise(text)} "
    out: list[str] = []
    for n in range(lo, hi + 1):
        for i in range(min(HEAD_CHARS, len(padded) - n + 1)):
            gram = padded[i : i + n]
            if gram != " " and " " not in gram[1:-1]:
                out.append(gram)
    return out


HEAD_CHARS = 48
ANALYZERS = {"chars": char_grams, "words": word_grams, "head": head_grams}

# The same n-grams as the analyzers above, as 64-bit polynomial hashes computed with numpy: a request
# is hashed in a few vector operations instead of one Python string per n-gram. Every span of a text
# hashes to sum(c[j] * P**(end - 1 - j)) mod 2**64 over its code points plus one, which equals
# POW[end - 1] * (S[end] - S[start]) with S the prefix sums of c[j] * P**-j.
_P = 0x100000001B3  # odd, so invertible modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)
_SPACE_CODE = ord(" ") + 1
_POWERS = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))  # a cache, swapped whole


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P**k and P**-k modulo 2**64 for k < n (grown on demand and kept; never mutated in place)."""
    global _POWERS
    powers = _POWERS
    if len(powers[0]) < n:
        size = max(n, 2 * len(powers[0]), 4096)
        _POWERS = powers = (
            np.cumprod(np.r_[np.uint64(1), np.full(size - 1, _P, dtype=np.uint64)], dtype=np.uint64),
            np.cumprod(np.r_[np.uint64(1), np.full(size - 1, _P_INV, dtype=np.uint64)], dtype=np.uint64),
        )
    return powers


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64) + np.uint64(1)


def _prefix(codes: np.ndarray) -> np.ndarray:
    size = len(codes)
    _, inv = _powers(size + 1)
    out = np.zeros(size + 1, dtype=np.uint64)
    np.cumsum(codes * inv[:size], out=out[1:])
    return out


def _spans(prefix: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    pw, _ = _powers(len(prefix))
    out: np.ndarray = pw[end - 1] * (prefix[end] - prefix[start])
    return out


def _char_table(text: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash, length and start of every `char_grams` n-gram: those of " w1 w2 ... " with no space inside
    them (only at their ends), and no lone spaces."""
    codes = _codes(f" {_normalise(text)} ")
    size = len(codes)
    prefix = _prefix(codes)
    space = np.ones(size + hi, dtype=bool)  # past the end counts as space
    np.equal(codes, _SPACE_CODE, out=space[:size])
    inner = np.zeros(size, dtype=bool)  # for the current n: a space at one of the inner positions 1..n-2
    starts, lengths = [], []
    for n in range(1, hi + 1):
        count = size - n + 1
        if count <= 0:
            break
        if n >= 3:
            inner[:count] |= space[n - 2 : n - 2 + count]
        if n >= lo:
            starts.append(np.flatnonzero(~(space[:count] if n == 1 else inner[:count])))
            lengths.append(np.full(len(starts[-1]), n))
    if not starts:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    start, length = np.concatenate(starts), np.concatenate(lengths)
    return _spans(prefix, start, start + length), length, start


def _char_hashes(text: str, lo: int, hi: int) -> np.ndarray:
    return _char_table(text, lo, hi)[0]


def _word_hashes(text: str, lo: int, hi: int) -> np.ndarray:
    """`word_grams`: spans of "w1 w2 ...", from the start of word i to the end of word i + n - 1."""
    words = _WORD.findall(_normalise(text))
    if not words:
        return np.zeros(0, dtype=np.uint64)
    prefix = _prefix(_codes(" ".join(words)))
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    ends = np.cumsum(lengths + 1) - 1
    starts = ends - lengths
    out = [_spans(prefix, starts[: len(words) - n + 1], ends[n - 1 :]) for n in range(lo, hi + 1) if n <= len(words)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def _head_hashes(text: str, lo: int, hi: int) -> np.ndarray:
    hashes, _, start = _char_table(text, lo, hi)
    return hashes[start < HEAD_CHARS]


HASHERS = {"chars": _char_hashes, "words": _word_hashes, "head": _head_hashes}


def term_hashes(terms: list[str]) -> np.ndarray:
    """The hash of each whole term, as the hashers give it for the same n-gram."""
    if not terms:
        return np.zeros(0, dtype=np.uint64)
    prefix = _prefix(_codes("\n".join(terms)))
    ends = np.cumsum([len(t) + 1 for t in terms]) - 1
    return _spans(prefix, ends - np.array([len(t) for t in terms]), ends)


SHAPE_NAMES = (
    "log_chars",
    "log_words",
    "log_lines",
    "digit_share",
    "log_numbers",
    "log_maths",
    "log_blanks",
    "log_questions",
    "cjk_share",
    "upper_share",
    "code",
)


def shape_features(text: str) -> np.ndarray:
    """Length and structure of the text, in the order of SHAPE_NAMES."""
    chars = max(1, len(text))
    letters = sum(c.isalpha() for c in text) or 1
    return np.array(
        [
            math.log1p(len(text)),
            math.log1p(len(text.split())),
            math.log1p(text.count("\n")),
            sum(c.isdigit() for c in text) / chars,
            math.log1p(len(_NUMBER.findall(text))),
            math.log1p(len(_MATHS.findall(text))),
            math.log1p(len(_BLANK.findall(text))),
            math.log1p(text.count("?") + text.count("？")),
            len(CJK.findall(text)) / chars,
            sum(c.isupper() for c in text) / letters,
            float(bool(CODE_WORDS.search(text)) or "```" in text),
        ],
        dtype=np.float32,
    )


@dataclass
class Ngrams:
    """One TF-IDF block's state: its analyzer, vocabulary, idf and (once trained) weights per output."""

    kind: str  # a key of ANALYZERS
    lo: int
    hi: int
    terms: list[str]
    idf: np.ndarray  # (terms,)
    coef: np.ndarray  # (terms, outputs); empty until trained

    def grams(self, text: str) -> list[str]:
        """The n-grams as strings (training builds the vocabulary from these)."""
        return ANALYZERS[self.kind](text, self.lo, self.hi)


class Lexicon:
    """Every block's vocabulary in one sorted hash table, so a text costs one look-up and one count.

    `row(text)` gives the columns (over the blocks, concatenated) and values of the text's TF-IDF row:
    sublinear term frequency times idf, L2-normalised within each block. Training builds its matrix
    from the same rows, so training and routing cannot disagree.
    """

    def __init__(self, blocks: list[Ngrams]) -> None:
        self.blocks = blocks
        sizes = [len(b.terms) for b in blocks]
        self.offsets = np.cumsum([0, *sizes])
        salted = [term_hashes(b.terms) ^ _salt(i) for i, b in enumerate(blocks)]
        hashes = np.concatenate(salted) if salted else np.zeros(0, dtype=np.uint64)
        self.columns = np.argsort(hashes, kind="stable")
        self.keys = hashes[self.columns]
        self.idf = np.concatenate([np.asarray(b.idf, dtype=np.float32) for b in blocks] or [np.zeros(0, np.float32)])
        self.size = int(self.offsets[-1])

    def hashes(self, text: str) -> np.ndarray:
        """Every block's n-gram hashes, salted by block; the character blocks share one table."""
        parts = []
        by_chars = [(i, b) for i, b in enumerate(self.blocks) if b.kind in ("chars", "head")]
        if by_chars:
            table, length, start = _char_table(text, min(b.lo for _, b in by_chars), max(b.hi for _, b in by_chars))
            for i, b in by_chars:
                keep = (length >= b.lo) & (length <= b.hi)
                if b.kind == "head":
                    keep &= start < HEAD_CHARS
                parts.append(table[keep] ^ _salt(i))
        parts += [HASHERS[b.kind](text, b.lo, b.hi) ^ _salt(i) for i, b in enumerate(self.blocks) if b.kind == "words"]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        hashes = self.hashes(text)
        if not self.size or not len(hashes):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        at = np.minimum(np.searchsorted(self.keys, hashes), self.size - 1)
        cols, tf = np.unique(self.columns[at[self.keys[at] == hashes]], return_counts=True)
        values = (1.0 + np.log(tf, dtype=np.float32)) * self.idf[cols]
        block = np.searchsorted(self.offsets, cols, side="right") - 1
        norms = np.sqrt(np.bincount(block, weights=values * values, minlength=len(self.blocks)))
        return cols, (values / np.maximum(norms, 1e-12)[block]).astype(np.float32)


def _salt(block: int) -> np.uint64:
    """Keeps the same n-gram in two blocks apart in the shared table."""
    return np.uint64((0x9E3779B97F4A7C15 * (block + 1)) & 0xFFFFFFFFFFFFFFFF)


# --- the model and its artifact -------------------------------------------------------------------


@dataclass
class Model:
    """A linear model over the four feature blocks; what `turnout train` writes and the strategy reads."""

    mode: str  # category | cost
    labels: tuple[str, ...]  # routes; in cost mode ordered cheap to strong
    encoder_id: str
    dense: np.ndarray  # (dim, outputs)
    blocks: list[Ngrams]
    shape: np.ndarray  # (len(SHAPE_NAMES), outputs)
    intercept: np.ndarray  # (outputs,)
    metadata: dict[str, Any] = field(default_factory=dict)
    encoder_max_tokens: int = 0  # the encoder's input cap at training time (0: none); vectors depend on it

    def __post_init__(self) -> None:
        self.reads_shape = bool(np.any(self.shape))  # category models leave shape out: skip computing it
        self.lexicon = Lexicon(self.blocks)
        outputs = len(self.labels)
        self.lexical = np.ascontiguousarray(  # rows are gathered per request
            np.concatenate([b.coef for b in self.blocks] or [np.zeros((0, outputs))]), dtype=np.float32
        )

    def logits(self, vector: np.ndarray, text: str) -> np.ndarray:
        out: np.ndarray = self.intercept + vector @ self.dense
        if self.reads_shape:
            out = out + shape_features(text) @ self.shape
        cols, values = self.lexicon.row(text)
        out = out + values @ self.lexical[cols]
        return out

    def predict(self, vector: np.ndarray, text: str) -> np.ndarray:
        """Category: P(label), summing to 1. Cost: P(the route's answer is good), per route."""
        z = self.logits(vector, text).astype(np.float64)
        if self.mode == "category":
            e = np.exp(z - z.max())
            p: np.ndarray = e / e.sum()
            return p
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str | Path) -> None:
        arrays: dict[str, Any] = {
            "format_version": np.array(FORMAT_VERSION),
            "mode": np.array(self.mode),
            "labels": np.array(self.labels),
            "encoder_id": np.array(self.encoder_id),
            "encoder_max_tokens": np.array(self.encoder_max_tokens),
            "dense": self.dense.astype(np.float32),
            "shape_names": np.array(SHAPE_NAMES),
            "shape": self.shape.astype(np.float32),
            "intercept": self.intercept.astype(np.float32),
            "blocks": np.array([f"{b.kind}:{b.lo}:{b.hi}" for b in self.blocks]),
            "metadata": np.array(json.dumps(self.metadata, sort_keys=True)),
        }
        for i, b in enumerate(self.blocks):
            arrays[f"block{i}_terms"] = np.frombuffer("\n".join(b.terms).encode(), dtype=np.uint8)
            arrays[f"block{i}_idf"] = b.idf.astype(np.float32)
            arrays[f"block{i}_coef"] = b.coef.astype(np.float32)
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as f:  # a file object: numpy adds no `.npz` to the name
            np.savez_compressed(f, **arrays)
        os.replace(tmp, target)  # a gateway reading the old artifact never sees half a file


def _text(data: Any, key: str) -> str:
    return str(data[key].item())


def load_model(path: str | Path, where: str = "classifier.artifact") -> Model:
    """Read an artifact; ConfigError (naming `where` and the fix) when it is missing, unreadable or stale."""
    p = Path(path)
    retrain = f"retrain it with `turnout train DATA.jsonl --out {p}`"
    if not p.is_file():
        raise ConfigError(f"{where}: artifact `{p}` does not exist; {retrain}")
    try:
        with np.load(p, allow_pickle=False) as data:
            version = int(data["format_version"])
            if version != FORMAT_VERSION:
                raise ConfigError(
                    f"{where}: artifact `{p}` has format version {version}; this turnout reads version "
                    f"{FORMAT_VERSION}: {retrain}"
                )
            if tuple(data["shape_names"].tolist()) != SHAPE_NAMES:
                raise ConfigError(f"{where}: artifact `{p}` was built with other shape features; {retrain}")
            blocks = []
            for i, spec in enumerate(data["blocks"].tolist()):
                kind, lo, hi = spec.split(":")
                blob = bytes(data[f"block{i}_terms"]).decode()
                terms = blob.split("\n") if blob else []
                blocks.append(Ngrams(kind, int(lo), int(hi), terms, data[f"block{i}_idf"], data[f"block{i}_coef"]))
            model = Model(
                mode=_text(data, "mode"),
                labels=tuple(data["labels"].tolist()),
                encoder_id=_text(data, "encoder_id"),
                dense=data["dense"],
                blocks=blocks,
                shape=data["shape"],
                intercept=data["intercept"],
                metadata=json.loads(_text(data, "metadata")),
                encoder_max_tokens=int(data["encoder_max_tokens"]),
            )
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read artifact `{p}` ({type(exc).__name__}: {exc}); {retrain}") from None
    problems = _shape_problems(model)
    if problems:
        raise ConfigError(f"{where}: artifact `{p}` is inconsistent ({problems}); {retrain}")
    return model


def _shape_problems(m: Model) -> str:
    n = len(m.labels)
    if m.mode not in MODES:
        return f"unknown mode `{m.mode}`"
    if len(m.labels) < 2 or len(set(m.labels)) != len(m.labels):
        return "it needs at least two distinct labels"
    if (
        m.dense.ndim != 2
        or m.dense.shape[1] != n
        or m.shape.shape != (len(SHAPE_NAMES), n)
        or m.intercept.shape != (n,)
    ):
        return "weights do not match the labels"
    for b in m.blocks:
        if b.kind not in ANALYZERS or b.coef.shape != (len(b.terms), n) or b.idf.shape != (len(b.terms),):
            return f"n-gram block `{b.kind}` does not match its terms"
    return ""


def good_enough(quality: np.ndarray) -> np.ndarray:
    """Cost mode, per route cheap to strong: P(no stronger route would succeed where this one fails).

    Outcomes are treated as independent given the text; the strongest route is always good enough.
    """
    stronger = np.maximum.accumulate(quality[::-1])[::-1]  # best P(good) from each route up
    out: np.ndarray = np.ones_like(quality)
    out[:-1] = 1.0 - (1.0 - quality[:-1]) * stronger[1:]
    return out


def cost_choice(quality: np.ndarray, threshold: float) -> tuple[int, float]:
    """The cheapest route whose P(good enough) clears the threshold, else the strongest.

    Returns its index and the confidence: P(good enough) for a cheaper route; for the strongest,
    P(a stronger route is needed) at the cheaper route closest to clearing the threshold.
    """
    enough = good_enough(quality)
    for i, p in enumerate(enough[:-1]):
        if p >= threshold:
            return i, float(p)
    return len(quality) - 1, 1.0 - float(enough[:-1].max())


# --- the strategy ---------------------------------------------------------------------------------


def encoder_max_tokens(encoder: Any) -> int:
    """The input cap of a local encoder (its vectors depend on it); 0 when it has none."""
    return int(getattr(encoder, "max_tokens", 0) or 0)


class ClassifierStrategy:
    name = "classifier"

    def __init__(
        self, router: str, config: ClassifierConfig, encoders: EncoderSet, routes: tuple[str, ...] | None = None
    ) -> None:
        self.router = router
        self.cfg = config
        self.encoders = encoders
        where = f"routers.{router}.classifier"
        if config.encoder not in encoders.configs:
            raise ConfigError(f"{where}.encoder: encoder `{config.encoder}` is not defined under `encoders`")
        self.model = load_model(config.artifact, f"{where}.artifact")
        encoder = encoders.get(config.encoder)
        retrain = f"retrain with `turnout train --encoder {config.encoder}`"
        if encoder.id != self.model.encoder_id:
            raise ConfigError(
                f"{where}.artifact: `{config.artifact}` was trained on encoder `{self.model.encoder_id}`, but "
                f"encoder `{config.encoder}` is `{encoder.id}`; set `{where}.encoder` to a matching encoder "
                f"or {retrain}"
            )
        cap, trained_cap = encoder_max_tokens(encoder), self.model.encoder_max_tokens
        if cap != trained_cap:
            raise ConfigError(
                f"{where}.artifact: `{config.artifact}` was trained with the encoder's input capped at "
                f"{trained_cap or 'no'} tokens, but `encoders.{config.encoder}.max_tokens` gives "
                f"{cap or 'no cap'}; the vectors would differ: set it back or {retrain}"
            )
        foreign = [label for label in self.model.labels if routes is not None and label not in routes]
        if foreign:  # caught at load; decide() checks again for a strategy built without its routes
            names = ", ".join(f"`{x}`" for x in foreign)
            raise ConfigError(
                f"{where}.artifact: classifier labels {names} are not routes of router `{router}` "
                f"({', '.join(routes or ())}); retrain with route names as labels"
            )
        digest = hashlib.sha256(Path(config.artifact).read_bytes()).hexdigest()[:12]
        self.provenance = [f"artifact:{digest}"]
        # The router holds category proposals to threshold and margin; cost mode applies its threshold here.
        self.policy: tuple[float | None, float | None] = (
            (config.threshold, config.margin) if self.model.mode == "category" else (None, None)
        )
        self._checked: tuple[str, ...] | None = None
        self._warned = False

    async def start(self) -> None:
        """Load the encoder now, so the first request does not pay for it."""
        try:
            await self.encoders.get(self.cfg.encoder).encode(["warm up"])
        except Exception as exc:  # a remote encoder that is down fails open at request time
            log.warning("router `%s`: classifier encoder did not warm up (%s)", self.router, type(exc).__name__)

    def _check_routes(self, routes: tuple[str, ...]) -> None:
        if self._checked == routes:
            return
        foreign = [label for label in self.model.labels if label not in routes]
        if foreign:
            names = ", ".join(f"`{x}`" for x in foreign)
            message = (f"router `{self.router}`: classifier labels {names} are not routes of this router; "
                       "retrain with route names as labels")  # fmt: skip
            if not self._warned:  # said once in the log; every request still records the failure
                log.error("%s", message)
                self._warned = True
            raise ClassificationFailed(message, code="labels_not_routes")
        self._checked = routes

    def prefetch(self, ctx: RequestContext) -> None:
        if ctx.features is not None:
            ctx.features.prefetch(self.cfg.encoder, self.encoders.call(self.cfg.encoder))

    async def _embedding(self, ctx: RequestContext) -> np.ndarray:
        assert ctx.features is not None
        name = self.cfg.encoder
        with failing_open(name):
            return await ctx.features.embedding(name, self.encoders.call(name))

    async def decide(self, ctx: RequestContext, routes: tuple[str, ...]) -> Decision | None:
        features = ctx.features
        if features is None or not features.text.strip():
            return None
        self._check_routes(routes)
        vector = await self._embedding(ctx)
        m = self.model
        if vector.shape != (m.dense.shape[0],):
            got, want = vector.shape[-1], m.dense.shape[0]
            message = f"encoder `{self.cfg.encoder}` gave {got}-dimensional vectors; the artifact expects {want}"
            raise ClassificationFailed(message, code="dimension_mismatch")
        probs = m.predict(vector, features.text)
        if m.mode == "category":
            scores = {label: round(float(p), 4) for label, p in zip(m.labels, probs, strict=True)}
            best = int(np.argmax(probs))
            route, confidence = m.labels[best], float(probs[best])
            reason = f"classifier: `{route}` most likely"
        else:
            # Scores are P(good enough), the strongest route's 1: strong minus cheap is P(stronger needed),
            # the very number the threshold cuts, so `turnout eval --sweep` walks the same curve.
            enough = good_enough(probs)
            scores = {label: round(float(p), 4) for label, p in zip(m.labels, enough, strict=True)}
            best, confidence = cost_choice(probs, self.cfg.threshold)
            route, t = m.labels[best], self.cfg.threshold
            good = ", ".join(f"{label} {p:.2f}" for label, p in zip(m.labels, probs, strict=True))
            verdict = "no cheaper route is" if best == len(m.labels) - 1 else f"`{route}` is the cheapest route"
            reason = f"classifier: {verdict} good enough at threshold {t} (P(good answer): {good})"
        return Decision(route=route, strategy=self.name, confidence=round(confidence, 4), reason=reason,
                        scores=scores, provenance=list(self.provenance))  # fmt: skip
