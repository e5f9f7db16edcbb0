"""`turnout calibrate`: real configs with deliberately bad thresholds, real exhaustive decisions, replayed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.test_evaluate import LABELLED, OUTCOMES, config_tree, write_config, write_jsonl
from turnout.calibrate import Traces, calibrate, current_settings, nice, replay, split
from turnout.cli import main
from turnout.config import load_config
from turnout.evaluate import Case, decide_cases, read_cases
from turnout.gateway import Gateway
from turnout.types import Decision

THRESHOLD = ("routers", "auto", "semantic", "threshold")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Threshold 0.45: too high for these utterances, so most `deep` requests fall back to `lite`."""
    d = tmp_path_factory.mktemp("calibrate")
    settings, _ = load_config(write_config(d / "turnout.yaml", config_tree(d / "runtime", threshold=0.45)))
    gw = Gateway(settings, {})
    asyncio.run(gw.start())
    yield gw
    asyncio.run(gw.close())


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    path = write_jsonl(tmp_path_factory.mktemp("data") / "labelled.jsonl", LABELLED)
    return read_cases(path, ["lite", "deep"], "auto")


@pytest.fixture(scope="module")
def decisions(gateway: Gateway, cases: list[Case]) -> list[Decision]:
    return asyncio.run(decide_cases(gateway, "auto", cases, exhaustive=True))


def adversarial(cases: list[Case]) -> list[Case]:
    """The same cases, with every held-out `deep` case (seed 0) relabelled `lite`: what fits the fit set
    hurts the held-out set. The split depends on the messages only, so relabelling leaves it alone."""
    _, held = split(cases, 0.3, 0)
    return [dataclasses.replace(c, label="lite") if i in held and c.label == "deep" else c for i, c in enumerate(cases)]


def test_replaying_the_current_settings_reproduces_every_decision(gateway: Gateway, decisions: list[Decision]) -> None:
    router = gateway.routers["auto"]
    traces = Traces.of(router, decisions)
    assert traces.strategies == ("rules", "semantic")
    before = current_settings(router)
    assert before == {
        THRESHOLD: 0.45,
        ("routers", "auto", "semantic", "margin"): 0.03,
        ("routes", "lite", "threshold"): None,
        ("routes", "deep", "threshold"): None,
    }
    assert (replay(traces, before) == traces.recorded).all()
    everything_passes = {**before, THRESHOLD: 0.0, ("routers", "auto", "semantic", "margin"): 0.0}
    rules_or_semantic = [traces.routes[i] for i in replay(traces, everything_passes)]
    assert rules_or_semantic == [d.trace[0].get("route") or d.trace[1]["route"] for d in decisions]


def test_a_too_high_threshold_is_lowered_and_both_sets_improve(
    gateway: Gateway, cases: list[Case], decisions: list[Decision]
) -> None:
    cal = calibrate(gateway.routers["auto"], cases, decisions, holdout=0.3, seed=0)
    assert (len(cal.fit), len(cal.held)) == (14, 6)
    assert cal.patch == {"routers": {"auto": {"semantic": {"threshold": 0.12}}}}
    before, after = cal.scores["before"], cal.scores["after"]
    assert (before["fit"].correct, before["holdout"].correct) == (9, 3)
    assert (after["fit"].correct, after["holdout"].correct) == (14, 6)
    assert cal.replay_mismatches == 0 and cal.refusal is None


def test_a_target_share_caps_the_route_while_keeping_what_accuracy_it_can(
    gateway: Gateway, cases: list[Case], decisions: list[Decision]
) -> None:
    cal = calibrate(gateway.routers["auto"], cases, decisions, targets={"deep": 0.3})
    fit = cal.scores["after"]["fit"]
    assert fit.shares["deep"] <= 0.3 and fit.overshoot == 0
    assert (fit.correct, cal.after[THRESHOLD]) == (10, 0.36)  # 4 of 14 to deep; the best such threshold
    assert cal.scores["before"]["fit"].correct == 9


def test_refuses_when_the_held_out_set_gets_worse(
    gateway: Gateway, cases: list[Case], decisions: list[Decision]
) -> None:
    cal = calibrate(gateway.routers["auto"], adversarial(cases), decisions)
    assert cal.changed == [THRESHOLD]
    assert cal.refusal == "held-out accuracy would drop from 1.000 to 0.500"


def test_split_is_seeded_sized_and_keeps_identical_conversations_together(cases: list[Case]) -> None:
    doubled = [*cases, *cases]  # every conversation twice
    fit, held = split(doubled, 0.3, seed=7)
    assert len(held) == 12 and sorted([*fit, *held]) == list(range(40))
    for i in held:
        assert (i + 20) % 40 in held  # its twin is held out too
    assert np.array_equal(split(doubled, 0.3, seed=7)[1], held)
    assert not np.array_equal(split(doubled, 0.3, seed=8)[1], held)
    assert len(split(cases, 0.0, seed=0)[1]) == 0


def test_thresholds_are_short_decimals_between_neighbouring_confidences() -> None:
    assert nice(0.3357, 0.3764) == 0.36
    assert nice(0.29, 0.31) == 0.3
    assert nice(0.30, 0.31) == 0.305  # passes 0.31, not 0.30
    assert nice(0.5001, 0.5002) == 0.50015


# --- the command --------------------------------------------------------------------------------


def merged(tree: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(tree)
    for k, v in patch.items():
        out[k] = merged(tree.get(k, {}), v) if isinstance(v, dict) else v
    return out


def test_calibrate_command_fixes_a_route_threshold_and_the_patched_config_decides_as_replayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = config_tree(tmp_path / "runtime", threshold=0.28, deep_threshold=0.5)  # the route's override is bad
    cfg = write_config(tmp_path / "turnout.yaml", tree)
    data = write_jsonl(tmp_path / "data.jsonl", LABELLED)
    out = tmp_path / "patch.yaml"
    assert main(["calibrate", str(data), "--config", str(cfg), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["changed"] == ["routes.deep.threshold"]
    assert (report["before"]["holdout"]["correct"], report["after"]["holdout"]["correct"]) == (3, 6)
    assert report["written"] == str(out) and report["refused"] is None
    patch = yaml.safe_load(out.read_text())
    assert patch == {"routes": {"deep": {"threshold": 0.16}}} == report["patch"]
    # The patched config, decided for real, gives exactly what calibrate replayed: every case right.
    settings, _ = load_config(write_config(tmp_path / "patched.yaml", merged(tree, patch)))

    async def decide() -> list[Decision]:
        gw = Gateway(settings, {})
        await gw.start()
        try:
            return await decide_cases(gw, "auto", read_cases(data, ["lite", "deep"], "auto"))
        finally:
            await gw.close()

    assert [d.route for d in asyncio.run(decide())] == [row["label"] for row in LABELLED]


def test_calibrate_command_refuses_to_write_when_held_out_accuracy_drops(
    tmp_path: Path, cases: list[Case], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "turnout.yaml", config_tree(tmp_path / "runtime", threshold=0.45))
    rows = [{"messages": c.messages, "label": c.label} for c in adversarial(cases)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "patch.yaml"
    assert main(["calibrate", str(data), "--config", str(cfg), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert not out.exists()
    assert "refused: held-out accuracy would drop from 1.000 to 0.500" in captured.out
    assert captured.err == (
        f"turnout: not writing `{out}`: held-out accuracy would drop from 1.000 to 0.500; "
        "keep the current settings or add labelled cases\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-share", "huge=0.3"], "--target-share huge=0.3: `huge` is not a route of router `auto`"),
        (["--target-share", "deep=1.5"], "--target-share deep=1.5: write ROUTE=SHARE with SHARE between 0 and 1"),
        (["--holdout", "1"], "--holdout 1.0: give a share between 0 (no check) and 1"),
        (["--router", "lite"], "`lite` is a route, not a router; use one of: `auto`"),
    ],
)
def test_calibrate_command_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    cfg = write_config(tmp_path / "turnout.yaml", config_tree(tmp_path / "runtime"))
    data = write_jsonl(tmp_path / "data.jsonl", LABELLED)
    assert main(["calibrate", str(data), "--config", str(cfg), *args]) == 2
    assert capsys.readouterr().err.startswith(f"turnout: {message}")


def test_calibrate_needs_labelled_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "turnout.yaml", config_tree(tmp_path / "runtime"))
    data = write_jsonl(tmp_path / "data.jsonl", OUTCOMES)
    assert main(["calibrate", str(data), "--config", str(cfg)]) == 2
    assert "has no cases with a `label`" in capsys.readouterr().err
