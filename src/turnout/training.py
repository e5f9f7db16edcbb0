"""`turnout train`: a classifier artifact (see `turnout.strategies.classifier`) from labelled JSONL.

One case a line: `{"messages": [...]}` or `{"text": "..."}`, optional `"lang"`, and either
  "label": "math"                       category mode: the route this request should take
  "outcomes": {"lite": 0, "deep": 1}    cost mode: how good each route's answer was (0..1)
The classified text is `Features(body).text`, exactly what the router classifies at routing time.

Features: [embedding | char, word and head n-gram TF-IDF | shape] (see the strategy's docstring).
Category mode fits a one-vs-rest linear SVM, whose scores become probabilities through a softmax whose
temperature is fitted on a held-out fifth of the training rows; cost mode fits one logistic regression
per route on its outcomes (fractional outcomes count as weights). scikit-learn trains; the weights are
folded into plain arrays, so routing needs numpy only.

The holdout split (`--holdout`, seeded) measures; the artifact is then fitted on every row.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy import sparse  # type: ignore[import-untyped]

from turnout import __version__
from turnout.errors import ConfigError, TurnoutError
from turnout.features import Features
from turnout.strategies.classifier import (
    ANALYZERS,
    SHAPE_NAMES,
    Lexicon,
    Model,
    Ngrams,
    cost_choice,
    encoder_max_tokens,
    good_enough,
    shape_features,
    term_hashes,
)
from turnout.types import Encoder

# --- reading ------------------------------------------------------------------------------


@dataclass
class Row:
    line: int
    text: str
    label: str | None = None
    outcomes: dict[str, float] | None = None
    lang: str | None = None


def text_of(body: dict[str, Any]) -> str:
    """The text the router classifies for this body (default window and length cap)."""
    return Features(body).text


def _row(line: int, raw: bytes) -> Row:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TurnoutError(f"line {line}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise TurnoutError(f"line {line}: expected an object with `messages` or `text`")
    if isinstance(obj.get("messages"), list):
        body: dict[str, Any] = {"messages": obj["messages"]}
    elif isinstance(obj.get("text"), str):
        body = {"messages": [{"role": "user", "content": obj["text"]}]}
    else:
        raise TurnoutError(f"line {line}: needs `messages` (a list) or `text` (a string)")
    text = text_of(body)
    if not text.strip():
        raise TurnoutError(f"line {line}: no text to classify")
    label, outcomes = obj.get("label"), obj.get("outcomes")
    if (label is None) == (outcomes is None):
        raise TurnoutError(f"line {line}: needs exactly one of `label` (category mode) or `outcomes` (cost mode)")
    if label is not None and (not isinstance(label, str) or not label):
        raise TurnoutError(f"line {line}: `label` must be a non-empty string (a route name)")
    if outcomes is not None:
        ok = isinstance(outcomes, dict) and len(outcomes) >= 2
        if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in outcomes.values()):
            raise TurnoutError(
                f'line {line}: `outcomes` must map two or more routes to numbers, e.g. {{"lite": 0, "deep": 1}}'
            )
        outcomes = {str(k): float(v) for k, v in outcomes.items()}
        if not all(0 <= v <= 1 for v in outcomes.values()):
            raise TurnoutError(f"line {line}: `outcomes` must lie in 0..1 (1: a good answer); scale scores first")
    lang = obj.get("lang")
    return Row(line, text, label, outcomes, lang if isinstance(lang, str) else None)


def read_rows(lines: Iterable[bytes]) -> list[Row]:
    """Parse JSONL; blank lines are skipped; errors name the line."""
    rows = [_row(i, raw) for i, raw in enumerate(lines, 1) if raw.strip()]
    if not rows:
        raise TurnoutError("no rows: the file is empty")
    kinds = {r.label is None for r in rows}
    if len(kinds) > 1:
        first = next(r for r in rows if (r.label is None) != (rows[0].label is None))
        raise TurnoutError(f"line {first.line}: mixes `label` and `outcomes` rows; use one kind per file")
    if rows[0].outcomes is not None:
        routes = set(rows[0].outcomes)
        for r in rows:
            assert r.outcomes is not None
            if set(r.outcomes) != routes:
                raise TurnoutError(
                    f"line {r.line}: `outcomes` names {sorted(r.outcomes)}; every row must name {sorted(routes)}"
                )
    return rows


def infer_mode(rows: Sequence[Row]) -> str:
    return "category" if rows[0].label is not None else "cost"


def check_mode(rows: Sequence[Row], mode: str | None) -> str:
    """The mode asked for (or inferred), when the rows have what it needs."""
    inferred = infer_mode(rows)
    if mode is not None and mode != inferred:
        need = "`label`" if mode == "category" else "`outcomes`"
        raise TurnoutError(f"--mode {mode} needs {need} on every row")
    return inferred


# --- features -----------------------------------------------------------------------------


@dataclass
class Params:
    """Feature weights and regularisation; `for_mode` gives the defaults tuned with bench/routing_quality.py."""

    c: float = 0.3  # inverse regularisation: of the linear SVM (category) or the logistic regression (cost)
    dense: float = 1.0  # block weights: each block's rows are L2-normalised, then scaled by these
    chars: float = 1.0
    words: float = 1.0
    head: float = 1.0
    shape: float = 0.0
    char_ngrams: tuple[int, int] = (2, 4)
    word_ngrams: tuple[int, int] = (1, 2)
    head_ngrams: tuple[int, int] = (1, 3)
    min_df: int = 2
    max_terms: int = 60000  # per n-gram block, most frequent first

    @classmethod
    def for_mode(cls, mode: str, c: float | None = None) -> Params:
        """Category: lexical blocks matter most. Cost: difficulty is faint, so regularise hard and read shape."""
        p = cls() if mode == "category" else cls(c=0.1, head=0.0, shape=1.0)
        if c is not None:
            p.c = c
        return p


def fit_ngrams(kind: str, span: tuple[int, int], texts: Sequence[str], min_df: int, max_terms: int) -> Ngrams:
    """A TF-IDF block's vocabulary and smooth idf, from the training texts."""
    analyze = ANALYZERS[kind]
    df: Counter[str] = Counter()
    for t in texts:
        df.update(set(analyze(t, *span)))
    kept = sorted((g for g, k in df.items() if k >= min_df), key=lambda g: (-df[g], g))[:max_terms]
    kept.sort()
    _, first = np.unique(term_hashes(kept), return_index=True)  # two terms, one hash: keep one (never seen yet)
    kept = [kept[i] for i in sorted(first.tolist())]
    n = len(texts)
    idf = np.array([math.log((1 + n) / (1 + df[g])) + 1 for g in kept], dtype=np.float32)
    return Ngrams(kind, span[0], span[1], kept, idf, np.zeros((len(kept), 0), dtype=np.float32))


def lexical_matrix(lexicon: Lexicon, texts: Sequence[str]) -> Any:
    """The n-gram blocks' rows, exactly as the strategy computes them at routing time."""
    indptr, indices, values = [0], [], []
    for t in texts:
        cols, vals = lexicon.row(t)
        indices.append(cols)
        values.append(vals)
        indptr.append(indptr[-1] + len(cols))
    data = np.concatenate(values) if values else np.zeros(0, np.float32)
    idx = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    return sparse.csr_matrix((data, idx, np.array(indptr)), shape=(len(texts), lexicon.size))


@dataclass
class Featurizer:
    """Fitted on training texts: turns (vectors, texts) into the design matrix the regression sees."""

    params: Params
    blocks: list[Ngrams]
    shape_mean: np.ndarray
    shape_std: np.ndarray

    @classmethod
    def fit(cls, texts: Sequence[str], params: Params) -> Featurizer:
        spans = {"chars": params.char_ngrams, "words": params.word_ngrams, "head": params.head_ngrams}
        weights = {"chars": params.chars, "words": params.words, "head": params.head}
        blocks = [fit_ngrams(k, spans[k], texts, params.min_df, params.max_terms) for k in spans if weights[k] > 0]
        shapes = np.stack([shape_features(t) for t in texts])
        return cls(params, blocks, shapes.mean(0), shapes.std(0) + 1e-6)

    def block_weights(self) -> list[float]:
        return [getattr(self.params, b.kind) for b in self.blocks]

    def matrix(self, vectors: np.ndarray, texts: Sequence[str]) -> Any:
        p = self.params
        parts = [sparse.csr_matrix(vectors * p.dense)]
        if self.blocks:
            lexicon = Lexicon(self.blocks)
            scale = np.repeat(self.block_weights(), [len(b.terms) for b in self.blocks])
            parts.append(lexical_matrix(lexicon, texts) @ sparse.diags(scale.astype(np.float32)))
        if p.shape > 0:
            shapes = (np.stack([shape_features(t) for t in texts]) - self.shape_mean) / self.shape_std
            parts.append(sparse.csr_matrix(shapes * p.shape))
        return sparse.hstack(parts, format="csr")

    def fold(
        self, coef: np.ndarray, intercept: np.ndarray, dim: int
    ) -> tuple[np.ndarray, list[Ngrams], np.ndarray, np.ndarray]:
        """Weights over the scaled design matrix -> weights over raw features (dense, blocks, shape, intercept)."""
        p = self.params
        dense = (coef[:, :dim] * p.dense).T
        at = dim
        blocks = []
        for b, w in zip(self.blocks, self.block_weights(), strict=True):
            n = len(b.terms)
            blocks.append(Ngrams(b.kind, b.lo, b.hi, b.terms, b.idf, (coef[:, at : at + n] * w).T.astype(np.float32)))
            at += n
        shape = np.zeros((len(SHAPE_NAMES), coef.shape[0]), dtype=np.float64)
        intercept = intercept.astype(np.float64).copy()
        if p.shape > 0:
            shape = (coef[:, at:] * p.shape / self.shape_std).T
            intercept -= self.shape_mean @ shape
        return dense, blocks, shape, intercept


# --- fitting ------------------------------------------------------------------------------


def route_order(rows: Sequence[Row]) -> list[str]:
    """Cost mode: routes from the weakest mean outcome to the strongest (cheap to strong)."""
    assert rows[0].outcomes is not None
    means = {r: float(np.mean([row.outcomes[r] for row in rows if row.outcomes])) for r in rows[0].outcomes}
    return sorted(means, key=lambda r: (means[r], r))


def _soft_fit(x: Any, target: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """Logistic regression on outcomes in 0..1: each row counts as good with weight o, bad with 1 - o."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    if target.min() == target.max():  # every answer equally good: a constant
        p = float(np.clip(target[0], 1e-4, 1 - 1e-4))
        return np.zeros(x.shape[1]), math.log(p / (1 - p))
    n = len(target)
    xx = sparse.vstack([x, x], format="csr")
    y = np.r_[np.ones(n), np.zeros(n)]
    w = np.r_[target, 1.0 - target]
    keep = w > 0
    lr = LogisticRegression(C=c, max_iter=3000).fit(xx[keep], y[keep], sample_weight=w[keep])
    return lr.coef_[0], float(lr.intercept_[0])


def _svm(x: Any, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest linear SVM scores, one row of weights per class (two rows for two classes)."""
    from sklearn.svm import LinearSVC  # type: ignore[import-untyped]

    svm = LinearSVC(C=c, max_iter=5000).fit(x, y)
    coef, intercept = np.asarray(svm.coef_), np.asarray(svm.intercept_)
    if coef.shape[0] == 1:  # binary: one score for the second class; make it a softmax over two
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    return coef, intercept


DEFAULT_TEMPERATURE = 4.0  # about what the fit below finds on the bench data sets; for data too small to fit it


def _temperature(x: Any, y: np.ndarray, texts: Sequence[str], c: float) -> float:
    """SVM scores -> probabilities: softmax(T * scores), T fitted on a held-out fifth of the training rows."""
    from scipy.optimize import minimize_scalar  # type: ignore[import-untyped]

    fit_idx, val_idx = split([Row(0, t) for t in texts], 0.2, seed=0)
    classes = len(set(y.tolist()))
    if len(val_idx) < 20 or len(set(y[fit_idx].tolist())) < classes:
        return DEFAULT_TEMPERATURE
    coef, intercept = _svm(x[fit_idx], y[fit_idx], c)
    scores = np.asarray(x[val_idx] @ coef.T) + intercept
    truth = scores[np.arange(len(val_idx)), y[val_idx]]

    def nll(log_t: float) -> float:
        z = scores * math.exp(log_t)
        top = z.max(1)
        return float(np.mean(top + np.log(np.exp(z - top[:, None]).sum(1)) - truth * math.exp(log_t)))

    best = minimize_scalar(nll, bounds=(math.log(0.1), math.log(100.0)), method="bounded")
    return float(math.exp(best.x))


def fit(rows: Sequence[Row], vectors: np.ndarray, mode: str, encoder_id: str, params: Params,
        order: Sequence[str] | None = None) -> Model:  # fmt: skip
    """Train on all given rows; the Model carries no metadata yet."""
    texts = [r.text for r in rows]
    featurizer = Featurizer.fit(texts, params)
    x = featurizer.matrix(vectors, texts)
    if mode == "category":
        labels = sorted({r.label for r in rows if r.label is not None})
        if len(labels) < 2:
            raise TurnoutError(f"category mode needs at least two labels; the data has only `{labels[0]}`")
        y = np.array([labels.index(r.label) for r in rows if r.label is not None])
        coef, intercept = _svm(x, y, params.c)
        temperature = _temperature(x, y, texts, params.c)
        coef, intercept = coef * temperature, intercept * temperature
        extra: dict[str, Any] = {"temperature": round(temperature, 4)}
    else:
        labels = list(order or route_order(rows))
        fitted = [_soft_fit(x, np.array([r.outcomes[route] for r in rows if r.outcomes]), params.c) for route in labels]
        coef, intercept = np.vstack([f[0] for f in fitted]), np.array([f[1] for f in fitted])
        extra = {}
    dense, blocks, shape, folded = featurizer.fold(np.asarray(coef), np.asarray(intercept), vectors.shape[1])
    return Model(mode, tuple(labels), encoder_id, dense.astype(np.float32), blocks,
                 shape.astype(np.float32), folded.astype(np.float32), extra)  # fmt: skip


# --- evaluation ---------------------------------------------------------------------------


def split(rows: Sequence[Row], holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/holdout indices; rows with the same text stay on the same side."""
    if holdout <= 0:
        return list(range(len(rows))), []
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.text, []).append(i)
    keys = sorted(groups, key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).digest())
    target = holdout * len(rows)
    test: list[int] = []
    for k in keys:
        if len(test) >= target:
            break
        test += groups[k]
    held = set(test)
    return [i for i in range(len(rows)) if i not in held], sorted(test)


def predict_all(model: Model, vectors: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    return np.stack([model.predict(v, t) for v, t in zip(vectors, texts, strict=True)])


def quality_curve(good: np.ndarray, cheap: np.ndarray, strong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two routes: send the k least-likely-good-enough rows to the strong route, for every k.

    Returns (share of strong calls, mean quality), both of length rows + 1. Sweeping the threshold
    of the strategy walks the same curve.
    """
    n = len(good)
    order = np.argsort(good, kind="stable")
    gain = (strong - cheap)[order]
    quality = (cheap.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / n
    return np.arange(n + 1) / n, quality


def apgr(shares: np.ndarray, quality: np.ndarray, cheap: float, strong: float) -> float:
    """Average performance gap recovered over strong-call shares 0..1 (a random router scores 0.5)."""
    gap = (quality - cheap) / (strong - cheap)
    return float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(shares)))


def cpt(shares: np.ndarray, quality: np.ndarray, cheap: float, strong: float, recovered: float = 0.5) -> float:
    """The smallest share of strong calls that recovers this part of the gap (random: the part itself)."""
    gap = (quality - cheap) / (strong - cheap)
    return float(shares[int(np.argmax(gap >= recovered))])


def cost_report(model: Model, rows: Sequence[Row], quality: np.ndarray) -> dict[str, Any]:
    """Holdout numbers for cost mode: per-route accuracy of P(good), the threshold table, APGR and CPT(50%)."""
    labels = list(model.labels)
    outcomes = np.array([[r.outcomes[lab] for lab in labels] for r in rows if r.outcomes])
    hits = (quality >= 0.5) == (outcomes >= 0.5)
    out: dict[str, Any] = {"accuracy": {lab: round(float(hits[:, i].mean()), 4) for i, lab in enumerate(labels)}}
    out["quality"] = {lab: round(float(outcomes[:, i].mean()), 4) for i, lab in enumerate(labels)}
    # Thresholds that send a given share of calls past the cheapest route (quantiles of its P(good enough)).
    enough = np.array([good_enough(q)[0] for q in quality])
    table = []
    for target in np.round(np.arange(0.1, 1.0, 0.1), 1):
        t = float(np.ceil(np.quantile(enough, target) * 1000) / 1000)
        chosen = np.array([cost_choice(q, t)[0] for q in quality])
        share = {lab: round(float((chosen == i).mean()), 4) for i, lab in enumerate(labels)}
        got = float(outcomes[np.arange(len(rows)), chosen].mean())
        table.append({"threshold": t, "share": share, "quality": round(got, 4)})
    out["thresholds"] = table
    if len(labels) == 2:
        cheap, strong = outcomes[:, 0], outcomes[:, 1]
        q0, q1 = float(cheap.mean()), float(strong.mean())
        if q1 > q0:
            shares, curve = quality_curve(enough, cheap, strong)
            out["apgr"] = round(apgr(shares, curve, q0, q1), 4)
            out["cpt50"] = round(cpt(shares, curve, q0, q1), 4)
    return out


# --- the command --------------------------------------------------------------------------


async def embed(encoder: Encoder, texts: Sequence[str], batch: int = 64, progress: bool = False) -> np.ndarray:
    chunks = []
    for i in range(0, len(texts), batch):
        chunks.append(np.asarray(await encoder.encode(list(texts[i : i + batch])), dtype=np.float32))
        if progress:
            print(f"\rembedding {min(i + batch, len(texts))}/{len(texts)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return np.concatenate(chunks)


@dataclass
class Result:
    model: Model
    holdout: dict[str, Any] = field(default_factory=dict)


def train(rows: Sequence[Row], vectors: np.ndarray, encoder_id: str, mode: str | None = None,
          holdout: float = 0.2, seed: int = 0, params: Params | None = None,
          order: Sequence[str] | None = None) -> Result:  # fmt: skip
    """Measure on a seeded holdout split, then fit the shipped model on every row."""
    mode = check_mode(rows, mode)
    params = params or Params.for_mode(mode)
    if mode == "cost":
        known = sorted(rows[0].outcomes or {})
        if order is not None and sorted(order) != known:
            raise TurnoutError(f"--routes must name each route of `outcomes` once: {', '.join(known)}")
        order = list(order or route_order(rows))
    report: dict[str, Any] = {}
    train_idx, test_idx = split(rows, holdout, seed)
    if test_idx:
        if not train_idx:
            raise TurnoutError("--holdout leaves no rows to train on")
        part = fit([rows[i] for i in train_idx], vectors[train_idx], mode, encoder_id, params, order)
        test_rows = [rows[i] for i in test_idx]
        probs = predict_all(part, vectors[test_idx], [r.text for r in test_rows])
        report = {"rows": len(test_idx), "seed": seed}
        if mode == "category":
            predicted = [part.labels[int(i)] for i in probs.argmax(1)]
            hits = [p == r.label for p, r in zip(predicted, test_rows, strict=True)]
            report["accuracy"] = round(float(np.mean(hits)), 4)
            report["per_label"] = _per_label(test_rows, predicted)
        else:
            report.update(cost_report(part, test_rows, probs))
    model = fit(rows, vectors, mode, encoder_id, params, order)
    model.metadata |= {
        "rows": len(rows),
        "holdout": report,
        "trained_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "turnout": __version__,
        "params": asdict(params),
        "label_counts": _label_counts(rows),
    }
    return Result(model, report)


def _per_label(rows: Sequence[Row], predicted: Sequence[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for label in sorted({r.label for r in rows if r.label}):
        hits = [p == label for p, r in zip(predicted, rows, strict=True) if r.label == label]
        out[label] = {"rows": len(hits), "accuracy": round(float(np.mean(hits)), 4)}
    return out


def _label_counts(rows: Sequence[Row]) -> dict[str, int]:
    return dict(sorted(Counter(r.label for r in rows if r.label).items()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="JSONL: `messages` or `text`, with `label` (category) or `outcomes` (cost)")
    parser.add_argument("--out", required=True, help="artifact to write (`.npz`)")
    parser.add_argument("--encoder", default="default", help="name under the config's `encoders` (default: default)")
    parser.add_argument("--mode", choices=["category", "cost"], help="default: inferred from the rows")
    parser.add_argument("--routes", help="cost mode: routes cheap to strong, comma-separated "
                        "(default: by mean outcome, weakest first)")  # fmt: skip
    parser.add_argument("--holdout", type=float, default=0.2, help="share held out to measure (default 0.2; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the holdout split (default 0)")
    parser.add_argument("--c", type=float, help="inverse regularisation (default: 0.3 in category mode, 0.1 in cost)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from turnout.cli import resolve_config_path  # the CLI imports this module: import back lazily
    from turnout.config import load_config
    from turnout.encoders import EncoderSet
    from turnout.upstreams import build_upstream

    if not 0 <= args.holdout < 1:
        raise ConfigError("--holdout: give a share in [0, 1), e.g. 0.2")
    path = Path(args.data)
    try:
        with path.open("rb") as f:
            rows = read_rows(f)
    except OSError as exc:
        raise TurnoutError(f"cannot read `{path}`: {exc.strerror}") from None
    except TurnoutError as exc:
        raise TurnoutError(f"{path}: {exc.message}") from None
    mode = check_mode(rows, args.mode)
    order = [r.strip() for r in args.routes.split(",")] if args.routes else None
    settings, _ = load_config(resolve_config_path(args.config))
    if args.encoder not in settings.encoders:
        valid = ", ".join(f"`{n}`" for n in settings.encoders)
        raise ConfigError(f"--encoder: `{args.encoder}` is not defined under `encoders`; valid: {valid}")

    async def vectors() -> tuple[str, int, np.ndarray]:
        upstreams = {n: build_upstream(n, c) for n, c in settings.upstreams.items()}
        encoders = EncoderSet(settings.encoders, upstreams)
        try:
            encoder = encoders.get(args.encoder)
            vecs = await embed(encoder, [r.text for r in rows], progress=sys.stderr.isatty())
            return encoder.id, encoder_max_tokens(encoder), vecs
        finally:
            await encoders.close()
            for u in upstreams.values():
                await u.close()

    t0 = time.perf_counter()
    encoder_id, cap, vecs = asyncio.run(vectors())
    params = Params.for_mode(mode, args.c)
    result = train(rows, vecs, encoder_id, mode, args.holdout, args.seed, params, order)
    result.model.metadata["source"] = path.name
    result.model.encoder_max_tokens = cap
    try:
        result.model.save(args.out)
    except OSError as exc:
        raise TurnoutError(f"cannot write `{args.out}`: {exc.strerror}") from None
    elapsed = time.perf_counter() - t0
    if args.json:
        summary = {"artifact": args.out, "mode": mode, "labels": list(result.model.labels),
                   "encoder_id": encoder_id, "rows": len(rows), "holdout": result.holdout,
                   "seconds": round(elapsed, 1)}  # fmt: skip
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(summary_text(result, args.out, elapsed))
    return 0


def summary_text(result: Result, out: str, elapsed: float) -> str:
    m, h = result.model, result.holdout
    lines = [f"wrote {out}: {m.mode} mode, encoder `{m.encoder_id}`, {m.metadata['rows']} rows, {elapsed:.1f} s"]
    if m.mode == "category":
        lines.append(f"labels ({len(m.labels)}): {', '.join(m.labels)}")
        if h:
            lines.append(f"holdout: accuracy {h['accuracy']:.3f} on {h['rows']} rows (seed {h['seed']})")
            lines += [f"  {label:<20} {v['accuracy']:.3f}  ({v['rows']} rows)" for label, v in h["per_label"].items()]
    else:
        lines.append(f"routes, cheap to strong: {' < '.join(m.labels)}")
        if h:
            quality = ", ".join(f"{k} {v:.3f}" for k, v in h["quality"].items())
            lines.append(f"holdout: {h['rows']} rows (seed {h['seed']}); mean outcome {quality}")
            if "apgr" in h:
                lines.append(f"  APGR {h['apgr']:.3f}, CPT(50%) {h['cpt50']:.1%} (a random router: 0.500, 50.0%)")
            lines.append("  threshold  " + "  ".join(f"{lab[:8]:>8}" for lab in m.labels) + "  quality")
            for t in h["thresholds"]:
                shares = "  ".join(f"{t['share'][lab]:>8.1%}" for lab in m.labels)
                lines.append(f"  {t['threshold']:>9.3f}  {shares}  {t['quality']:.3f}")
    if not h:
        lines.append("holdout: none (--holdout 0)")
    lines.append("the artifact is fitted on every row; set `routers.<name>.classifier.artifact` to use it")
    return "\n".join(lines)
