"""Log lines: JSON or text, with request ids and other extras, never a request's text."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import GatewayFactory, sdk
from turnout.errors import ConfigError
from turnout.telemetry.logs import JsonFormatter, RequestLogSink, TextFormatter
from turnout.types import RequestRecord

SECRET = "the-launch-code-is-0000"
HI = [{"role": "user", "content": SECRET}]


class Captured:
    """A real StreamHandler on one logger, writing into a buffer."""

    def __init__(self, logger: logging.Logger, formatter: logging.Formatter) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(formatter)
        self.logger = logger

    @property
    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()


@contextmanager
def captured(name: str, formatter: logging.Formatter | None = None, level: int = logging.INFO) -> Iterator[Captured]:
    """Logger `name` at `level`, written to a buffer only (not propagated) until the block ends."""
    logger = logging.getLogger(name)
    saved = logger.level, logger.propagate
    cap = Captured(logger, formatter or JsonFormatter())
    logger.addHandler(cap.handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield cap
    finally:
        logger.removeHandler(cap.handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@pytest.fixture
def capture(request: pytest.FixtureRequest) -> Iterator[Captured]:
    with captured(f"turnout.{request.node.name}") as cap:
        yield cap


def test_json_line_has_time_level_logger_message_and_request_id(capture: Captured) -> None:
    capture.logger.info("answered %s", "lite", extra={"request_id": "abc123", "attempts": 2})
    [line] = capture.lines
    out = json.loads(line)
    assert out == out | {"level": "INFO", "logger": capture.logger.name, "message": "answered lite",
                         "request_id": "abc123", "attempts": 2}  # fmt: skip
    assert list(out)[:4] == ["time", "level", "logger", "message"]
    assert time.strptime(out["time"], "%Y-%m-%dT%H:%M:%S.%fZ")


def test_json_line_leaves_out_bodies_and_text_fields(capture: Captured) -> None:
    capture.logger.warning("odd request", extra={"request_id": "r1", "body": {"messages": HI}, "messages": SECRET,
                                                 "prompt": SECRET, "tools": [SECRET]})  # fmt: skip
    out = json.loads(capture.lines[0])
    assert out["request_id"] == "r1" and not {"body", "messages", "prompt", "tools"} & set(out)
    assert SECRET not in capture.lines[0]


def test_exception_message_is_left_out_unless_the_error_is_ours(capture: Captured) -> None:
    try:
        raise ValueError(f"cannot parse {SECRET}")
    except ValueError:
        capture.logger.exception("internal error handling request %s", "r2", extra={"request_id": "r2"})
    try:
        raise ConfigError("no API key for upstream `openai`: set `OPENAI_API_KEY`")
    except ConfigError:
        capture.logger.exception("turnout cannot start")
    first, second = (json.loads(line) for line in capture.lines)
    assert first["exc_type"] == "ValueError" and "test_logs.py" in first["exc"]
    assert SECRET not in capture.buffer.getvalue()
    assert second["exc"].endswith("ConfigError: no API key for upstream `openai`: set `OPENAI_API_KEY`")


def test_text_line_appends_extras_and_hides_exception_messages() -> None:
    with captured("turnout.text", TextFormatter()) as capture:
        capture.logger.info("ready", extra={"request_id": "r3", "route": "lite", "reason": "two words"})
        try:
            raise KeyError(SECRET)
        except KeyError:
            capture.logger.exception("failed")
    text = capture.buffer.getvalue()
    assert capture.lines[0].endswith('INFO turnout.text: ready request_id=r3 route=lite reason="two words"')
    assert "Traceback (most recent call last)" in text and text.rstrip().endswith("KeyError")
    assert SECRET not in text


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_serve_log_config_formats_turnout_uvicorn_and_library_warnings(fmt: str) -> None:
    code = (
        "import logging, logging.config, sys\n"
        "from turnout.server import log_config\n"
        f"logging.config.dictConfig(log_config('info', {fmt!r}))\n"
        "logging.getLogger('turnout').info('routes loaded', extra={'request_id': 'r4'})\n"
        "logging.getLogger('uvicorn.error').info('Started server process [%d]', 42)\n"
        "logging.getLogger('aiohttp.client').info('not shown: below WARNING')\n"
        "logging.getLogger('opentelemetry.exporter').warning('export failed')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stderr.splitlines()
    assert len(lines) == 3, out.stderr
    if fmt == "json":
        parsed = [json.loads(line) for line in lines]
        assert [(p["logger"], p["message"]) for p in parsed] == [("turnout", "routes loaded"),
            ("uvicorn.error", "Started server process [42]"), ("opentelemetry.exporter", "export failed")]  # fmt: skip
        assert parsed[0]["request_id"] == "r4"
    else:
        assert lines[0].endswith("INFO turnout: routes loaded request_id=r4")
        assert lines[1].endswith("INFO uvicorn.error: Started server process [42]")


def test_request_log_writes_one_json_line_per_request(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    gw.app.telemetry.add(RequestLogSink(gw.app.settings))
    with captured("turnout.requests") as cap, sdk(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=HI)
        deadline = time.monotonic() + 5
        while not cap.lines and time.monotonic() < deadline:
            time.sleep(0.01)
    [line] = cap.lines
    out = json.loads(line)
    assert out == out | {"logger": "turnout.requests", "request_id": raw.headers["x-turnout-request-id"],
                         "endpoint": "chat", "status": 200, "router": "auto", "route": "lite", "model": "lite-model",
                         "upstream": "fake", "attempts": 1, "prompt_tokens": 8, "completion_tokens": 7}  # fmt: skip
    assert out["message"].startswith("chat 200 lite-model ") and out["latency_ms"] > 0
    assert SECRET not in line


def test_request_log_is_silent_below_info() -> None:
    with captured("turnout.requests", level=logging.WARNING) as cap:
        RequestLogSink().emit(RequestRecord("r5", 0.0, "chat", 200))
    assert cap.lines == []
