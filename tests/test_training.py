"""`turnout train`: reading labelled JSONL, the holdout split, the cost metrics and the command itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from turnout.cli import main
from turnout.errors import TurnoutError
from turnout.features import Features
from turnout.strategies.classifier import load_model
from turnout.training import Row, apgr, cpt, quality_curve, read_rows, route_order, split


def lines(*rows: Any) -> list[bytes]:
    return [r if isinstance(r, bytes) else orjson.dumps(r) for r in rows]


def test_rows_are_classified_on_the_text_the_router_reads() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "follow-up"}]},
    ]
    rows = read_rows(lines({"messages": messages, "label": "deep", "lang": "en"}, {"text": " hi ", "label": "lite"}))
    assert rows[0].text == Features({"messages": messages}).text == "first question\nfollow-up"
    assert (rows[0].label, rows[0].lang, rows[0].line) == ("deep", "en", 1)
    assert rows[1].text == " hi "


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b"{not json", "line 2: not valid JSON"),
        ({"label": "lite"}, "line 2: needs `messages` (a list) or `text` (a string)"),
        ({"text": "x"}, "line 2: needs exactly one of `label` (category mode) or `outcomes` (cost mode)"),
        ({"text": "x", "label": "a", "outcomes": {"a": 1, "b": 0}}, "line 2: needs exactly one of"),
        ({"text": "x", "label": 3}, "line 2: `label` must be a non-empty string"),
        ({"text": "   "}, "line 2: no text to classify"),
        ([1, 2], "line 2: expected an object"),
    ],
)
def test_bad_lines_are_named_by_number(bad: Any, message: str) -> None:
    with pytest.raises(TurnoutError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_rows(lines({"text": "fine", "label": "lite"}, bad))


def test_cost_rows_must_name_the_same_routes_with_outcomes_in_0_to_1() -> None:
    ok = {"text": "a", "outcomes": {"lite": 0, "deep": 1}}
    with pytest.raises(TurnoutError, match=r"line 3: `outcomes` names \['lite', 'mid'\]; every row must name"):
        read_rows(lines(ok, b"", {"text": "b", "outcomes": {"lite": 1, "mid": 1}}))
    with pytest.raises(TurnoutError, match=r"line 1: `outcomes` must lie in 0\.\.1"):
        read_rows(lines({"text": "a", "outcomes": {"lite": 0, "deep": 7}}))
    with pytest.raises(TurnoutError, match="line 2: mixes `label` and `outcomes` rows"):
        read_rows(lines(ok, {"text": "b", "label": "lite"}))
    more = [{"text": "b", "outcomes": {"lite": 1, "deep": 1}}, {"text": "c", "outcomes": {"deep": 0.5, "lite": 0}}]
    rows = read_rows(lines(ok, *more))
    assert route_order(rows) == ["lite", "deep"]  # weakest mean outcome first


def test_holdout_split_is_seeded_and_keeps_identical_texts_together() -> None:
    rows = [Row(i, f"text {i % 40}", "a") for i in range(200)]
    train, test = split(rows, 0.2, seed=1)
    assert split(rows, 0.2, seed=1) == (train, test) and split(rows, 0.2, seed=2) != (train, test)
    assert sorted(train + test) == list(range(200)) and 35 <= len(test) <= 45
    assert not {rows[i].text for i in train} & {rows[i].text for i in test}
    assert split(rows, 0, seed=1) == (list(range(200)), [])


def test_apgr_and_cpt_score_a_random_order_at_one_half_and_an_oracle_higher() -> None:
    cheap = np.array([0, 0, 1, 1, 0, 1, 0, 1], dtype=float)
    strong = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=float)
    q0, q1 = cheap.mean(), strong.mean()
    shares, quality = quality_curve(cheap, cheap, strong)  # an oracle: rows the cheap model fails go first
    assert quality[0] == q0 and quality[-1] == q1
    assert apgr(shares, quality, q0, q1) > 0.8 and cpt(shares, quality, q0, q1) == 0.25
    diagonal = q0 + shares * (q1 - q0)
    assert apgr(shares, diagonal, q0, q1) == pytest.approx(0.5)


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


CATEGORY = [
    *({"text": t, "label": "math"} for t in ["Solve 2x + 3 = 9", "What is the derivative of x^2?", "Integrate sin(x)",
                                             "计算 12 乘以 7", "Factor x^2 - 9", "Is 91 a prime number?"]),
    *({"text": t, "label": "chat"} for t in ["Hello there!", "Recommend a good book", "How was your weekend?",
                                             "你好呀", "Tell me a joke", "What's a nice plant for my desk?"]),
]  # fmt: skip


def test_train_command_writes_an_artifact_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write(tmp_path / "cases.jsonl", CATEGORY)
    out = tmp_path / "model.npz"
    assert main(["train", str(data), "--out", str(out), "--holdout", "0.25", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "category" and summary["labels"] == ["chat", "math"] and summary["rows"] == 12
    assert summary["encoder_id"] == "use-multilingual-v3-spm" and summary["holdout"]["rows"] >= 3
    assert 0 <= summary["holdout"]["accuracy"] <= 1
    model = load_model(out)
    assert model.metadata["source"] == "cases.jsonl" and model.metadata["label_counts"] == {"chat": 6, "math": 6}

    cost = [{"text": r["text"], "outcomes": {"big": 1, "small": int(r["label"] == "chat")}} for r in CATEGORY]
    data = write(tmp_path / "cost.jsonl", cost)
    assert main(["train", str(data), "--out", str(out), "--holdout", "0.25"]) == 0
    text = capsys.readouterr().out
    assert "cost mode" in text and "routes, cheap to strong: small < big" in text and "APGR" in text
    assert load_model(out).labels == ("small", "big")


def test_train_command_reports_bad_input_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "fine", "label": "a"}\n{"text": "no label"}\n')
    assert main(["train", str(data), "--out", str(tmp_path / "m.npz")]) == 1
    assert "bad.jsonl: line 2: needs exactly one of `label`" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "m.npz")]) == 1
    assert "cannot read" in capsys.readouterr().err
    data = write(tmp_path / "ok.jsonl", CATEGORY)
    assert main(["train", str(data), "--out", str(tmp_path / "m.npz"), "--encoder", "nope"]) == 2
    assert "--encoder: `nope` is not defined under `encoders`; valid: `default`" in capsys.readouterr().err
    assert main(["train", str(data), "--out", str(tmp_path / "m.npz"), "--mode", "cost"]) == 1
    assert "--mode cost needs `outcomes` on every row" in capsys.readouterr().err
