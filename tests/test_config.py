"""Config loading: closed sections, dotted-path errors, ${ENV} references, the embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from turnout.config import load_config, validate
from turnout.errors import ConfigError


def minimal(**extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "upstreams": {"local": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"small": {"upstream": "local", "name": "llama3.2"}},
        "routes": {"lite": {"targets": ["small"]}},
        "routers": {"auto": {"routes": ["lite"], "fallback": "lite"}},
    }
    cfg.update(extra)
    return cfg


def problems(raw: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw, env or {})
    return info.value.message


def test_minimal_config_loads_with_defaults() -> None:
    s = validate(minimal(), {})
    assert s.server.port == 4001 and s.proxy.attempts_per_target == 2
    assert s.routers["auto"].strategies == ["explicit"]
    assert s.passthrough.enabled is False and s.expose_models is False


def test_unknown_keys_are_rejected_with_their_dotted_path() -> None:
    raw = minimal()
    raw["upstreams"]["local"]["base_ur1"] = "x"
    raw["routes"]["lite"]["fallbacks"] = []
    raw["colour"] = "blue"
    msg = problems(raw)
    assert "upstreams.local.base_ur1: unknown key" in msg
    assert "routes.lite.fallbacks: unknown key" in msg
    assert "colour: unknown key" in msg


def test_bad_values_name_the_path_and_the_value() -> None:
    raw = minimal(server={"port": 70000})
    raw["models"]["small"]["capabilities"] = ["tools", "telepathy"]
    msg = problems(raw)
    assert "server.port: Input should be less than or equal to 65535 (got 70000)" in msg
    assert "models.small.capabilities[1]:" in msg and "'telepathy'" in msg


def test_missing_required_keys_are_named() -> None:
    raw = minimal()
    del raw["models"]["small"]["name"]
    assert "models.small.name: required key is missing" in problems(raw)


def test_cross_references_are_checked_at_load() -> None:
    raw = minimal()
    raw["models"]["big"] = {"upstream": "cloud", "name": "gpt-5"}
    raw["routes"]["lite"]["targets"] = ["small", "gpt-5"]
    raw["routers"]["auto"] = {"routes": ["lite", "deep"], "fallback": "deep", "strategies": ["magic"]}
    raw["routers"]["lite"] = {"routes": ["lite"], "fallback": "lite"}
    raw["passthrough"] = {"enabled": True}
    msg = problems(raw)
    assert "models.big.upstream: upstream `cloud` is not defined under `upstreams`" in msg
    assert "routes.lite.targets[1]: model `gpt-5` is not defined under `models`" in msg
    assert "routers.auto.routes[1]: route `deep` is not defined under `routes`" in msg
    assert "routers.auto.strategies[0]: unknown strategy `magic`; valid: `explicit`" in msg
    assert "routers.lite: `lite` is also a route" in msg
    assert "passthrough.upstream: passthrough is enabled; name the upstream" in msg


def test_env_references_are_filled_in_and_missing_ones_name_the_fix() -> None:
    raw = minimal()
    raw["upstreams"]["local"]["api_key"] = "${OPENAI_API_KEY}"
    raw["upstreams"]["local"]["base_url"] = "${BASE:-http://127.0.0.1:8000/v1}"
    s = validate(raw, {"OPENAI_API_KEY": "sk-test"})
    assert s.upstreams["local"].api_key == "sk-test"
    assert s.upstreams["local"].base_url == "http://127.0.0.1:8000/v1"
    msg = problems(raw, {})
    assert msg == (
        "upstreams.local.api_key: environment variable `OPENAI_API_KEY` is not set; "
        "set it, or write `${OPENAI_API_KEY:-}` to allow empty"
    )


def test_embedded_default_reads_its_environment() -> None:
    env = {"TURNOUT_UPSTREAM_URL": "http://10.0.0.5:8000/v1", "TURNOUT_UPSTREAM_KEY": "k",
           "TURNOUT_LITE_MODEL": "small", "TURNOUT_DEEP_MODEL": "large", "TURNOUT_API_KEYS": "a,b"}  # fmt: skip
    s, source = load_config(None, env)
    assert source == "embedded default (no config file)"
    assert s.upstreams["default"].base_url == "http://10.0.0.5:8000/v1"
    assert (s.models["lite-model"].name, s.models["deep-model"].name) == ("small", "large")
    assert list(s.routers) == ["auto", "auto-category"]
    assert list(s.routes) == ["lite", "deep", "code", "math", "translation", "writing", "reasoning", "chat"]
    assert s.routers["auto"].strategies == ["explicit", "rules", "semantic"]
    assert s.auth.keys == ["a", "b"]
    plain, _ = load_config(None, {})
    assert plain.upstreams["default"].base_url == "http://127.0.0.1:11434/v1" and plain.auth.keys == []


def test_config_files_load_and_bad_yaml_says_where(tmp_path: Path) -> None:
    good = tmp_path / "turnout.yaml"
    good.write_text("upstreams:\n  u: {base_url: 'http://127.0.0.1:1/v1'}\nmodels:\n  m: {upstream: u, name: x}\n"
                    "routes:\n  r: {targets: [m]}\n")  # fmt: skip
    s, source = load_config(good, {})
    assert source == f"file {good}" and list(s.routes) == ["r"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams:\n  u: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_config(bad, {})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", {})
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml", {})
