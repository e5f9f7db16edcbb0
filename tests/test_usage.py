"""Usage and cost from the audit log, over HTTP (`GET /usage`) and from the command line (`turnout usage`)."""

from __future__ import annotations

import copy
import json
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import GatewayFactory, GatewayThread, UpstreamThread, base_config, sdk
from turnout.cli import main
from turnout.replay import logged_requests
from turnout.telemetry.audit import MIGRATIONS, connect, migrate, open_store

HI = [{"role": "user", "content": "hello there"}]
PRICED = {
    "lite-model": {"upstream": "fake", "name": "fake-lite", "input_price": 1.0, "output_price": 2.0},
    "deep-model": {"upstream": "fake", "name": "fake-deep", "input_price": 10.0, "output_price": 20.0},
}
LITE = (8 * 1.0 + 7 * 2.0) / 1e6  # the fake upstream reports 8 prompt and 7 completion tokens
DEEP = (8 * 10.0 + 7 * 20.0) / 1e6


def usage(gw: GatewayThread, query: str, requests: int) -> dict[str, Any]:
    """GET /usage until the audit writer has flushed `requests` records (it writes within `flush_s`)."""
    deadline = time.monotonic() + 5
    while True:
        body: dict[str, Any] = httpx.get(f"{gw.url}/usage?{query}", timeout=5).json()
        if body["total"]["requests"] >= requests or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def traffic(gw: GatewayThread) -> None:
    """Three requests the `auto` router sends to lite, one to the `deep` route by name, one estimated stream."""
    with sdk(gw) as client:
        for _ in range(3):
            client.chat.completions.create(model="auto", messages=HI)
        client.chat.completions.create(model="deep", messages=HI)
        list(client.chat.completions.create(model="deep", messages=HI, stream=True))  # no usage: estimated


def test_usage_sums_tokens_cost_and_savings_against_the_most_expensive_route(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = make_gateway(runtime_dir=str(tmp_path), models=PRICED, telemetry={"audit": {"flush_s": 0.05}})
    traffic(gw)
    body = usage(gw, "group_by=router,route,model", 5)
    assert body["object"] == "turnout.usage" and body["group_by"] == ["router", "route", "model"]
    deep, lite = body["data"]  # ordered by router: NULL (a route named directly) first
    assert (lite["router"], lite["route"], lite["model"]) == ("auto", "lite", "lite-model")
    assert (lite["requests"], lite["errors"], lite["prompt_tokens"], lite["completion_tokens"]) == (3, 0, 24, 21)
    assert lite["cost_usd"] == pytest.approx(3 * LITE)
    assert lite["baseline_cost_usd"] == pytest.approx(3 * DEEP)  # the same tokens on `deep`, auto's priciest
    assert lite["savings_usd"] == pytest.approx(3 * (DEEP - LITE))
    assert (deep["router"], deep["route"], deep["requests"], deep["estimated_requests"]) == (None, "deep", 2, 1)
    assert deep["savings_usd"] == 0 and deep["cost_usd"] == deep["baseline_cost_usd"] > DEEP
    assert body["total"]["requests"] == 5 and body["total"]["savings_usd"] == pytest.approx(3 * (DEEP - LITE))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    [day] = usage(gw, f"group_by=day&since={today}&until={today}", 5)["data"]
    assert (day["day"], day["requests"]) == (today, 5)
    assert usage(gw, "group_by=none&since=2999-01-01", 0)["data"] == []


def test_usage_rejects_bad_query_parameters(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = make_gateway(runtime_dir=str(tmp_path))
    for query, param in [("since=yesterday", "since"), ("until=2025-13-01", "until"), ("group_by=tenant", "group_by"),
                         ("x=1", "x")]:  # fmt: skip
        r = httpx.get(f"{gw.url}/usage?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, query


def write_config(tmp_path: Path, upstream: UpstreamThread, **sections: Any) -> Path:
    config = copy.deepcopy(base_config(upstream.url))
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_usage_command_prints_a_table_and_json(
    make_gateway: GatewayFactory, upstream: UpstreamThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = make_gateway(runtime_dir=str(tmp_path), models=PRICED)
    traffic(gw)
    gw.stop()
    config = str(write_config(tmp_path, upstream, runtime_dir=str(tmp_path), models=PRICED))
    assert main(["usage", "--config", config, "--group-by", "route", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert [(d["route"], d["requests"]) for d in data] == [("deep", 2), ("lite", 3)]
    assert data[1]["cost_usd"] == pytest.approx(3 * LITE)
    assert main(["usage", "--config", config, "--group-by", "router"]) == 0
    out = capsys.readouterr().out
    assert "baseline $" in out and "savings $" in out and "1 of 5 requests have estimated token counts" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[1:3] == ["5", "0"] and f"{3 * (DEEP - LITE):.6f}" in total


CACHED = {  # the fake upstream reports 6 of its 8 prompt tokens as served from its cache
    "lite-model": {"upstream": "fake", "name": "fake-lite?cached=6", "input_price": 1.0, "output_price": 2.0,
                   "cached_input_price": 0.25},
    "deep-model": {"upstream": "fake", "name": "fake-deep?cached=6", "input_price": 10.0, "output_price": 20.0},
}  # fmt: skip


def test_cached_prompt_tokens_are_priced_at_the_cached_input_price(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """JSON and a stream with usage on `lite` (a cached price), JSON on `deep` (none: cached tokens cost as
    input): the audit rows, /usage (cost and baseline) and /metrics all price the cached part apart."""
    gw = make_gateway(runtime_dir=str(tmp_path), models=CACHED, telemetry={"audit": {"flush_s": 0.05}})
    with sdk(gw) as client:
        client.chat.completions.create(model="auto", messages=HI)  # auto decides lite
        list(client.chat.completions.create(model="lite", messages=HI, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
        client.chat.completions.create(model="deep", messages=HI)
    body = usage(gw, "group_by=router,route", 3)
    named_deep, named_lite, auto = body["data"]  # routes named directly (no router) first
    json_lite = (2 * 1.0 + 6 * 0.25 + 7 * 2.0) / 1e6
    assert (auto["router"], auto["route"], auto["prompt_tokens"], auto["cached_tokens"]) == ("auto", "lite", 8, 6)
    assert auto["cost_usd"] == pytest.approx(json_lite)
    assert auto["baseline_cost_usd"] == pytest.approx(DEEP)  # the same tokens on deep, whose cache costs as input
    assert (named_lite["route"], named_lite["cached_tokens"], named_lite["estimated_requests"]) == ("lite", 6, 0)
    assert named_lite["cost_usd"] == pytest.approx((2 * 1.0 + 6 * 0.25 + 4 * 2.0) / 1e6)  # 4 streamed tokens
    assert (named_deep["route"], named_deep["cached_tokens"]) == ("deep", 6)
    assert named_deep["cost_usd"] == pytest.approx(DEEP)
    assert body["total"]["cached_tokens"] == 18
    page = httpx.get(gw.url + "/metrics").text
    assert 'turnout_cached_tokens_total{model="lite-model"} 12.0' in page
    assert 'turnout_cached_tokens_total{model="deep-model"} 6.0' in page
    lite_cost = float(next(line.split()[-1] for line in page.splitlines()
                           if line.startswith('turnout_cost_total{currency="USD",model="lite-model"}')))  # fmt: skip
    assert lite_cost == pytest.approx(named_lite["cost_usd"] + json_lite)


def test_a_store_from_before_cached_tokens_reads_without_them(
    upstream: UpstreamThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`turnout usage` and `turnout replay` open a store read-only, so one that no upgraded gateway has
    opened yet (migrated to 0007, no `cached_tokens` column) still reads, with no cached tokens."""
    path = tmp_path / "old.sqlite3"
    with closing(connect(path)) as conn:
        migrate(conn, MIGRATIONS[:7])
        doc = [time.strftime("%Y-%m-%d", time.gmtime()), "r1", "chat", 200, None, "auto", "lite", "lite-model",
               "fake", "explicit", "x", 1.0, None, None, {}, [], [], 0.1, [], False, 1.0, None, 8, 7, False, LITE,
               "off", []]  # 0004's 28 values  # fmt: skip
        conn.execute("INSERT INTO request_log (ts, doc) VALUES (?, ?)", (time.time(), json.dumps(doc)))
        conn.commit()
    config = str(write_config(tmp_path, upstream, runtime_dir=str(tmp_path), models=PRICED))
    assert main(["usage", "--config", config, "--audit", str(path), "--group-by", "none", "--json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert (total["requests"], total["prompt_tokens"], total["cached_tokens"]) == (1, 8, 0)
    assert total["baseline_cost_usd"] == pytest.approx(DEEP)
    with closing(open_store(path)) as conn:
        [row] = logged_requests(conn, 0, time.time() + 1, 10)
    assert (row["request_id"], row["cached_tokens"]) == ("r1", None)
