"""The `turnout` command as a user runs it: real processes, real sockets, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import UpstreamThread, base_config, free_port

TURNOUT = [sys.executable, "-m", "turnout"]
HI = [{"role": "user", "content": "hi"}]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TURNOUT, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})  # fmt: skip


def write_config(tmp_path: Path, upstream: UpstreamThread, **sections: Any) -> Path:
    cfg = base_config(upstream.url)
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Served:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc, self.port, self.url = proc, port, f"http://127.0.0.1:{port}"


def start_serve(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Served:
    """`turnout serve` in `cwd` (the embedded default keeps its runtime directory, `.turnout`, there)."""
    port = free_port()
    proc = subprocess.Popen([*TURNOUT, "serve", "--port", str(port), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
                            cwd=cwd)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return Served(proc, port)
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("turnout serve did not start:\n" + (proc.communicate()[0] or ""))


def assert_clean_exit(s: Served) -> None:
    """uvicorn re-raises SIGTERM once it has shut down cleanly, so -15 is a clean exit too."""
    out = s.proc.communicate(timeout=15)[0]
    assert s.proc.returncode in (0, -signal.SIGTERM), out
    assert "Finished server process" in out and "Traceback" not in out


@pytest.fixture
def served() -> Iterator[list[Served]]:
    procs: list[Served] = []
    yield procs
    for s in procs:
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.communicate()


def test_serve_on_the_embedded_default_answers_through_auto_lite_and_deep(
    upstream: UpstreamThread, served: list[Served], tmp_path: Path
) -> None:
    env = {"TURNOUT_UPSTREAM_URL": upstream.url, "TURNOUT_LITE_MODEL": "small-one", "TURNOUT_DEEP_MODEL": "big-one",
           "TURNOUT_CONFIG": ""}  # fmt: skip
    s = start_serve(env=env, cwd=tmp_path)  # its audit log goes to tmp_path/.turnout, not the checkout's
    served.append(s)
    with openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0) as client:
        for model in ("auto", "lite", "deep"):
            assert client.chat.completions.create(model=model, messages=HI).choices[0].message.content
            stream = client.chat.completions.create(model=model, messages=HI, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "tok0 tok1 tok2 tok3 "
        assert [m.id for m in client.models.list()] == ["auto", "auto-category", "lite", "deep", "code", "math",
                                                        "translation", "writing", "reasoning", "chat"]  # fmt: skip
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "我们的生产环境挂了！"}]
        )
        assert (raw.headers["x-turnout-route"], raw.headers["x-turnout-strategy"]) == ("deep", "rules")
    assert [r["body"]["model"] for r in upstream.requests] == ["small-one", "small-one", "small-one", "small-one",
                                                               "big-one", "big-one", "big-one"]  # fmt: skip
    ready = httpx.get(s.url + "/ready").json()
    assert ready["config"] == "embedded default (no config file)" and ready["ready"] is True


def test_serve_with_a_dead_default_upstream_starts_and_says_so(served: list[Served], tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    s = start_serve(env={"TURNOUT_UPSTREAM_URL": dead, "TURNOUT_CONFIG": ""}, cwd=tmp_path)
    served.append(s)
    r = httpx.post(s.url + "/v1/chat/completions", json={"model": "auto", "messages": HI}, timeout=10)
    assert r.status_code == 502 and "connect" in r.json()["error"]["message"]
    ready = httpx.get(s.url + "/ready")
    assert ready.status_code == 503 and ready.json()["upstreams"]["default"]["reachable"] is False
    s.proc.send_signal(signal.SIGTERM)
    out = s.proc.communicate(timeout=15)[0]
    assert f"upstream `default` ({dead}): unreachable" in out
    assert "Traceback" not in out


def test_sigterm_lets_an_in_flight_stream_finish(
    tmp_path: Path, upstream: UpstreamThread, served: list[Served]
) -> None:
    cfg = write_config(tmp_path, upstream, server={"shutdown_grace_s": 10},
                       models={"slow": {"upstream": "fake", "name": "fake?chunks=20&delay_ms=40"}},
                       routes={"lite": {"targets": ["slow"]}})  # fmt: skip
    s = start_serve("--config", str(cfg))
    served.append(s)
    got: list[str] = []
    first = threading.Event()

    def consume() -> None:
        with openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0) as client:
            for chunk in client.chat.completions.create(model="lite", messages=HI, stream=True):
                first.set()
                if chunk.choices:
                    got.append(chunk.choices[0].delta.content or "")

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(10)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(httpx.TransportError):  # no longer accepting
        httpx.get(s.url + "/health", timeout=1)
    reader.join(10)
    assert "".join(got) == "".join(f"tok{i} " for i in range(20))
    assert_clean_exit(s)


def test_sigterm_cuts_streams_that_outlive_the_grace_period(
    tmp_path: Path, upstream: UpstreamThread, served: list[Served]
) -> None:
    cfg = write_config(tmp_path, upstream, server={"shutdown_grace_s": 1},
                       models={"endless": {"upstream": "fake", "name": "fake?chunks=1000&delay_ms=50"}},
                       routes={"lite": {"targets": ["endless"]}})  # fmt: skip
    s = start_serve("--config", str(cfg))
    served.append(s)
    with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=30,
                      json={"model": "lite", "messages": HI, "stream": True}) as r:  # fmt: skip
        chunks = r.iter_raw()
        next(chunks)
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        tail = b"".join(chunks)  # the stream ends cleanly, with an error event
    assert b'"code":"gateway_shutdown"' in tail
    assert time.monotonic() - start < 8
    assert_clean_exit(s)


def test_a_request_still_waiting_when_the_grace_runs_out_gets_a_503(
    tmp_path: Path, upstream: UpstreamThread, served: list[Served]
) -> None:
    cfg = write_config(tmp_path, upstream, server={"shutdown_grace_s": 1},
                       upstreams={"fake": {"base_url": upstream.url, "first_byte_timeout_s": 30}},
                       models={"slow": {"upstream": "fake", "name": "fake?fault=slow&slow_ms=8000"}},
                       routes={"lite": {"targets": ["slow"]}})  # fmt: skip
    s = start_serve("--config", str(cfg))
    served.append(s)
    result: list[httpx.Response] = []
    waiter = threading.Thread(
        target=lambda: result.append(
            httpx.post(s.url + "/v1/chat/completions", json={"model": "lite", "messages": HI}, timeout=20)
        )
    )
    waiter.start()
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGTERM)
    waiter.join(15)
    assert result[0].status_code == 503
    assert result[0].json()["error"]["code"] == "gateway_shutdown"
    assert_clean_exit(s)


def test_serve_with_workers_runs_several_processes(
    tmp_path: Path, upstream: UpstreamThread, served: list[Served]
) -> None:
    s = start_serve("--config", str(write_config(tmp_path, upstream)), "--workers", "2")
    served.append(s)
    with openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0) as client:
        for _ in range(6):
            assert client.chat.completions.create(model="auto", messages=HI).choices
    kids = Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read_text().split()
    assert len(kids) >= 2
    s.proc.send_signal(signal.SIGTERM)
    assert_clean_exit(s)


def test_serve_refuses_a_bad_config_with_its_dotted_path(tmp_path: Path, upstream: UpstreamThread) -> None:
    path = tmp_path / "bad.yaml"
    cfg = base_config(upstream.url)
    cfg["routes"]["lite"]["targets"] = ["nope"]
    path.write_text(yaml.safe_dump(cfg))
    r = run("serve", "--config", str(path), "--port", str(free_port()))
    assert r.returncode == 2
    assert "routes.lite.targets[0]: model `nope` is not defined under `models`" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_prints_a_table_and_fails_when_an_upstream_is_down(tmp_path: Path, upstream: UpstreamThread) -> None:
    r = run("check", "--config", str(write_config(tmp_path, upstream)))
    assert r.returncode == 1
    assert "config OK" in r.stdout and "not reachable: dead" in r.stdout
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith(("fake ", "dead "))}
    assert "ok (" in lines["fake"] and "missing: fake-deep" in lines["fake"]
    assert "unreachable" in lines["dead"]
    cfg = base_config(upstream.url)
    del cfg["upstreams"]["dead"], cfg["models"]["dead-model"]
    (tmp_path / "up.yaml").write_text(yaml.safe_dump(cfg))
    r = run("check", "--config", str(tmp_path / "up.yaml"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["upstreams"]["fake"]["reachable"] is True


def test_route_prints_the_decision_without_calling_a_model(tmp_path: Path, upstream: UpstreamThread) -> None:
    cfg = str(write_config(tmp_path, upstream))
    r = run("route", "hello there", "--config", cfg, "--router", "auto")
    assert r.returncode == 0
    assert "route:      lite" in r.stdout and "strategy:   fallback" in r.stdout
    r = run("route", "hello", "--config", cfg, "--route", "deep", "--json")
    out = json.loads(r.stdout)
    assert out["decision"]["route"] == "deep" and [t["model"] for t in out["targets"]] == ["deep-model", "lite-model"]
    r = run("route", "hello", "--config", cfg, "--router", "nope")
    assert r.returncode == 1 and "model `nope` is not a router or a route" in r.stderr
    assert upstream.requests == []


def test_banks_lists_and_shows_the_built_in_banks() -> None:
    r = run("banks")
    assert r.returncode == 0 and "security_incident" in r.stdout and "translation" in r.stdout
    r = run("banks", "--show", "data_loss")
    assert r.returncode == 0 and "误删" in r.stdout
    assert run("banks", "--show", "nope").returncode == 1
