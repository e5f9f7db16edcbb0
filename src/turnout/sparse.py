"""A lexical index: TF-IDF over character n-grams, so Chinese (no spaces) and typos both work.

Latin-script words give word unigrams plus character 3-grams inside the word; CJK text gives
character unigrams and bigrams. Scores are cosine similarities in [0, 1].
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
from scipy import sparse  # type: ignore[import-untyped]

TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]+|\w+", re.UNICODE)
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]")


def grams(text: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for tok in TOKEN.findall(text.lower()):
        if CJK.match(tok):
            out.update(tok)
            out.update(tok[i : i + 2] for i in range(len(tok) - 1))
        else:
            out[tok] += 1
            if len(tok) > 3:
                padded = f"<{tok}>"
                out.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return out


class SparseIndex:
    def __init__(self, documents: list[str]) -> None:
        counted = [grams(d) for d in documents]
        df: Counter[str] = Counter()
        for c in counted:
            df.update(c.keys())
        n = len(documents)
        self.vocab = {g: i for i, g in enumerate(sorted(df))}
        self.idf = np.array([math.log((1 + n) / (1 + df[g])) + 1 for g in sorted(df)], dtype=np.float32)
        rows, cols, vals = [], [], []
        for r, c in enumerate(counted):
            weights = {self.vocab[g]: (1 + math.log(k)) * self.idf[self.vocab[g]] for g, k in c.items()}
            norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
            for col, w in weights.items():
                rows.append(r)
                cols.append(col)
                vals.append(w / norm)
        self.matrix = sparse.csc_matrix((vals, (rows, cols)), shape=(n, len(self.vocab)), dtype=np.float32)
        self.size = n

    def scores(self, text: str) -> np.ndarray:
        """Cosine similarity of `text` with every document."""
        c = grams(text)
        cols, weights = [], []
        norm_sq = 0.0
        for g, k in c.items():
            w = 1 + math.log(k)
            col = self.vocab.get(g)
            if col is not None:
                w *= float(self.idf[col])
                cols.append(col)
                weights.append(w)
            else:
                w *= math.log(1 + self.size) + 1  # unseen gram: rare, still counts in the norm
            norm_sq += w * w
        if not cols:
            return np.zeros(self.size, dtype=np.float32)
        vec = np.asarray(weights, dtype=np.float32) / math.sqrt(norm_sq)
        out: np.ndarray = self.matrix[:, cols] @ vec
        return out
