"""The lexical index."""

import numpy as np

from turnout.sparse import SparseIndex, grams


def test_chinese_is_split_into_characters_and_bigrams() -> None:
    g = grams("翻译成英文")
    assert g["翻"] == 1 and g["翻译"] == 1 and g["英文"] == 1


def test_best_match_wins_in_english_and_chinese() -> None:
    ix = SparseIndex(["write a python function", "把这段话翻译成英文", "tell me a joke"])
    assert int(np.argmax(ix.scores("write me a function in python"))) == 0
    assert int(np.argmax(ix.scores("帮我翻译成英文"))) == 1
    assert float(ix.scores("write a python function")[0]) > 0.99


def test_text_with_no_known_grams_scores_zero() -> None:
    ix = SparseIndex(["hello world"])
    assert ix.scores("zzzz qqqq").tolist() == [0.0]
