"""Selection: capability and context filters, and health ordering."""

from __future__ import annotations

import pytest

from tests.test_config import minimal
from turnout.config import validate
from turnout.errors import NoCapableTarget
from turnout.health import HealthBoard
from turnout.selection import Selector, requirements


def selector(health: HealthBoard | None = None) -> Selector:
    raw = minimal()
    raw["upstreams"]["other"] = {"base_url": "http://127.0.0.1:9/v1"}
    raw["models"] = {
        "small": {"upstream": "local", "name": "s", "capabilities": ["tools"], "context_window": 100},
        "big": {"upstream": "other", "name": "b", "capabilities": ["tools", "vision"]},
    }
    raw["routes"]["lite"] = {"targets": ["small", "big"]}
    return Selector(validate(raw, {}), health or HealthBoard())


def text(n: int) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "x" * n}]}


def test_requirements_reads_tools_images_audio_and_size() -> None:
    body = {"tools": [{}], "response_format": {"type": "json_schema"}, "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "abcd" * 10}, {"type": "image_url"}]},
        {"role": "user", "content": [{"type": "input_audio"}]},
    ]}  # fmt: skip
    needs, tokens = requirements(body)
    assert needs == {"tools", "json_mode", "vision", "audio"}
    assert tokens == 20


def test_targets_without_a_needed_capability_are_dropped() -> None:
    s = selector()
    assert [t.key for t in s.targets("lite", text(10))] == ["small", "big"]
    image = {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    assert [t.key for t in s.targets("lite", image)] == ["big"]


def test_targets_whose_context_is_too_small_are_dropped() -> None:
    assert [t.key for t in selector().targets("lite", text(1000))] == ["big"]


def test_no_capable_target_is_a_clear_error() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}
    with pytest.raises(NoCapableTarget, match=r"route `lite` can serve this request \(needs: audio"):
        selector().targets("lite", body)


def test_targets_on_a_down_upstream_go_last() -> None:
    health = HealthBoard(threshold=2, cooldown_s=60)
    s = selector(health)
    health.failed("local")
    assert [t.key for t in s.targets("lite", text(1))] == ["small", "big"]
    health.failed("local")
    assert [t.key for t in s.targets("lite", text(1))] == ["big", "small"]
    health.ok("local")
    assert [t.key for t in s.targets("lite", text(1))] == ["small", "big"]


def test_after_the_cooldown_an_upstream_is_half_open() -> None:
    health = HealthBoard(threshold=2, cooldown_s=0.0)
    health.failed("local")
    health.failed("local")
    assert health.is_down("local") is False  # cooldown of 0 s is already over
    health.failed("local")
    assert health.is_down("local") is False  # one failure after the cooldown is not enough
