"""Real parts: a fake upstream and the gateway, each on a real 127.0.0.1 socket, driven over HTTP."""

from __future__ import annotations

import asyncio
import copy
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from aiohttp import web

from turnout.app import create_app
from turnout.config import validate
from turnout.testing.fake_upstream import FakeUpstream

UPSTREAM_KEY = "sk-upstream-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UpstreamThread:
    """The fake upstream on its own event loop in a background thread."""

    def __init__(self) -> None:
        self.fake = FakeUpstream()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "fake upstream did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.fake.app, handler_cancellation=True)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return list(self.fake.requests)

    @property
    def abandoned(self) -> list[dict[str, Any]]:
        return list(self.fake.abandoned)

    def clear(self) -> None:
        self.fake.requests.clear()
        self.fake.abandoned.clear()
        self.fake._seen.clear()


class GatewayThread:
    """The turnout app under uvicorn in a background thread, on a real socket."""

    def __init__(self, config: dict[str, Any]) -> None:
        settings = validate(config, {})
        self.app = create_app(settings, "test config")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(self.app, http="httptools", lifespan="on", log_level="warning", access_log=False)
        self.server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.01)
        self._sock = sock

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()


def base_config(upstream_url: str, runtime_dir: str | None = None) -> dict[str, Any]:
    """Routes on the fake upstream; fault models whose behaviour the fake reads from their names."""
    models: dict[str, Any] = {
        "lite-model": {"upstream": "fake", "name": "fake-lite"},
        "deep-model": {"upstream": "fake", "name": "fake-deep"},
        "dead-model": {"upstream": "dead", "name": "nobody-home"},
    }
    for fault in ("500", "429", "400", "401", "drop", "drop_mid", "slow"):
        models[f"m-{fault}"] = {"upstream": "fake", "name": f"fake?fault={fault}"}
    return {
        "upstreams": {
            "fake": {"base_url": upstream_url, "api_key": UPSTREAM_KEY, "first_byte_timeout_s": 1.0},
            "dead": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout_s": 0.5},
        },
        "models": models,
        "routes": {
            "lite": {"description": "quick answers", "targets": ["lite-model"]},
            "deep": {"description": "hard problems", "targets": ["deep-model", "lite-model"]},
        },
        "routers": {"auto": {"routes": ["lite", "deep"], "fallback": "lite"}},
        "proxy": {"attempts_per_target": 2, "backoff_s": 0.0, "retry_after_cap_s": 1.0},
        "runtime_dir": runtime_dir or tempfile.mkdtemp(prefix="turnout-test-"),
    }


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamThread]:
    up = UpstreamThread()
    yield up
    up.stop()


@pytest.fixture(autouse=True)
def _clean_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").clear()


GatewayFactory = Callable[..., GatewayThread]


@pytest.fixture
def make_gateway(upstream: UpstreamThread) -> Iterator[GatewayFactory]:
    """Start a gateway; keyword arguments are merged into the base config, section by section."""
    started: list[GatewayThread] = []

    def make(**sections: Any) -> GatewayThread:
        config = copy.deepcopy(base_config(upstream.url))
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key].update(value)
            else:
                config[key] = value
        gw = GatewayThread(config)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> GatewayThread:
    return make_gateway()


@pytest.fixture
def client(gateway: GatewayThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=10) as c:
        yield c


@pytest.fixture
def http(gateway: GatewayThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        yield c


def sdk(gw: GatewayThread, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)
