"""A fake OpenAI-compatible upstream for tests and demos: real HTTP on a real socket, JSON and SSE.

    python -m turnout.testing.fake_upstream --port 18000

Behaviour is chosen per request by the model name's query string (it survives any gateway), or by
an `x-fake-<knob>` header:

    knob          meaning                                                   example
    chunks        content chunks in a stream (default 4)                     fake?chunks=16
    delay_ms      pause between stream chunks                                fake?delay_ms=50
    tools         answer with a tool call (JSON) or tool-call deltas (SSE)   fake?tools=1
    fault         500 | 429 | 400 | 401 | drop | drop_mid | slow             fake?fault=429
                  500/429/400/401: OpenAI-style error with that status (429 adds Retry-After)
                  drop: close the connection before any response
                  drop_mid: send half the body or stream, then reset the connection
                  slow: wait slow_ms before the first byte
    fail_times    apply `fault` only to the first N requests with this model name, then answer
    retry_after   the Retry-After value of a 429 (default 1)
    slow_ms       default 5000
    cached        report this many of the 8 prompt tokens as served from     fake?cached=6
                  the upstream's cache (`usage.prompt_tokens_details`)
    judge         act as an LLM judge (non-streaming requests only)          fake?judge=1
                  1: answer a chat.completion whose content is a JSON verdict read from the last
                     user message: `route:<name>` there gives that route (as written) with
                     confidence 0.9, else the first route listed in the system prompt (lines
                     `- <route>: ...`) with 0.3; `confidence:<x>` there overrides the confidence
                  fenced: the same verdict inside a ```json code fence
                  unknown: a verdict for the route `no-such-route`
                  garbage: prose, not JSON

Every request is recorded (path, headers, JSON body); `GET /_fake/requests` returns them and
`DELETE /_fake/requests` clears them. Streams the client abandoned are listed under `abandoned`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import socket
import struct
import time
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

KNOBS = ("chunks", "delay_ms", "tools", "fault", "fail_times", "retry_after", "slow_ms", "judge", "cached")
DEFAULTS = {"chunks": "4", "delay_ms": "0", "tools": "0", "fault": "", "fail_times": "0", "retry_after": "1",
            "slow_ms": "5000", "judge": "", "cached": ""}  # fmt: skip


def _usage(completion: int, cached: str) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": 8, "completion_tokens": completion, "total_tokens": 8 + completion}
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": int(cached), "audio_tokens": 0}
    return usage


def knobs(model: str, headers: Any) -> dict[str, str]:
    k = dict(DEFAULTS)
    if "?" in model:
        k.update(parse_qsl(model.split("?", 1)[1]))
    for name in KNOBS:
        value = headers.get("x-fake-" + name.replace("_", "-"))
        if value is not None:
            k[name] = value
    return k


def _completion(model: str, tools: bool, cached: str = "") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "Hello from the fake upstream."}
    if tools:
        message = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}  # fmt: skip
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tools else "stop"}],
        "usage": _usage(7, cached),
    }  # fmt: skip


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def judge_verdict(body: dict[str, Any], mode: str) -> str:
    """The content a judge answers: a JSON verdict derived from the request, or the `mode`'s bad answer."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    system = next((_text(m.get("content")) for m in messages if m.get("role") == "system"), "")
    listed = re.findall(r"^- ([^:\s]+)", system, re.MULTILINE)
    named = re.search(r"route:(\S+)", user)
    route, confidence = (named.group(1), 0.9) if named else (listed[0] if listed else "none", 0.3)
    given = re.search(r"confidence:(-?[0-9]+(?:\.[0-9]+)?)", user)
    if given:
        confidence = float(given.group(1))
    if mode == "garbage":
        return "I would pick the deep route, it seems hard."
    if mode == "unknown":
        route = "no-such-route"
    verdict = json.dumps({"route": route, "confidence": confidence, "reason": f"fake judge chose {route}"})
    return f"```json\n{verdict}\n```" if mode == "fenced" else verdict


def sse_events(model: str, chunks: int, tools: bool, usage: bool, cached: str = "") -> list[bytes]:
    def ev(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": choices, **extra}  # fmt: skip
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "finish_reason": finish}]

    out = [ev(choice({"role": "assistant", "content": ""}))]
    if tools:
        out.append(ev(choice({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": ""}}]})))  # fmt: skip
        for part in ('{"city"', ': "Par', 'is"}'):
            out.append(ev(choice({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})))
        out.append(ev(choice({}, "tool_calls")))
    else:
        out += [ev(choice({"content": f"tok{i} "})) for i in range(chunks)]
        out.append(ev(choice({}, "stop")))
    if usage:
        out.append(ev([], usage=_usage(chunks, cached)))
    out.append(b"data: [DONE]\n\n")
    return out


def _error(status: int, message: str, type_: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status)


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.abandoned: list[dict[str, Any]] = []
        self._seen: dict[str, int] = {}
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/_fake/requests", self.list_requests)
        self.app.router.add_delete("/_fake/requests", self.clear_requests)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "fake"}]})

    async def list_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "abandoned": self.abandoned})

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.abandoned.clear()
        self._seen.clear()
        return web.json_response({"ok": True})

    async def embeddings(self, request: web.Request) -> web.Response:
        """Bag-of-words vectors (64 hashed dimensions): texts sharing words are close. `fault` applies."""
        body = await request.json()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        fault = knobs(str(body.get("model", "")), request.headers)["fault"]
        if fault in ("500", "429"):
            return _error(int(fault), "fake embeddings failure", "server_error", fault)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        data = []
        for i, text in enumerate(texts):
            vec = [0.0] * 64
            for word in str(text).lower().split():
                vec[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
            data.append({"object": "embedding", "index": i, "embedding": vec})
        return web.json_response({"object": "list", "data": data, "model": body.get("model")})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "body is not JSON", "invalid_request_error", "invalid_json")
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        model = str(body.get("model", "fake"))
        k = knobs(model, request.headers)
        fault = k["fault"]
        seen = self._seen.get(model, 0)
        self._seen[model] = seen + 1
        if int(k["fail_times"]) and seen >= int(k["fail_times"]):
            fault = ""
        if fault == "slow":
            await self._slow(model, float(k["slow_ms"]) / 1000)
        if fault == "drop":
            _reset(request)
            return web.Response()
        if fault == "500":
            return _error(500, "fake upstream failure", "server_error", "500")
        if fault == "429":
            resp = _error(429, "fake rate limit", "rate_limit_error", "rate_limit_exceeded")
            resp.headers["Retry-After"] = k["retry_after"]
            return resp
        if fault == "400":
            return _error(400, "fake: `temperature` must be <= 2", "invalid_request_error", "invalid_value")
        if fault == "401":
            return _error(401, "Incorrect API key provided: sk-live-abcdef123456", "invalid_request_error", "bad_key")
        tools = k["tools"] not in ("", "0")
        if not body.get("stream"):
            completion = _completion(model, tools, k["cached"])
            if k["judge"] not in ("", "0"):
                completion["choices"][0]["message"]["content"] = judge_verdict(body, k["judge"])
            data = json.dumps(completion).encode()
            if fault == "drop_mid":
                return await self._drop_mid_json(request, data)
            return web.Response(body=data, content_type="application/json")
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = sse_events(model, int(k["chunks"]), tools, usage, k["cached"])
        return await self._stream(request, model, events, float(k["delay_ms"]) / 1000, fault == "drop_mid")

    async def _slow(self, model: str, seconds: float) -> None:
        """Think like a slow model; a client that hangs up first cancels this (handler_cancellation) and
        the request is listed under `abandoned`."""
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.abandoned.append({"model": model, "sent": 0, "of": 0})
            raise

    async def _drop_mid_json(self, request: web.Request, data: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(data))})
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        _reset(request)
        return resp

    async def _stream(
        self, request: web.Request, model: str, events: list[bytes], delay: float, drop: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        stop = len(events) // 2 if drop else len(events)
        sent = 0
        try:
            for i, event in enumerate(events[:stop]):
                if delay and i:
                    await asyncio.sleep(delay)
                await resp.write(event)
                sent += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.abandoned.append({"model": model, "sent": sent, "of": len(events)})
            raise
        if drop:
            _reset(request)
            return resp
        await resp.write_eof()
        return resp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18000)
    a = ap.parse_args()
    web.run_app(FakeUpstream().app, host=a.host, port=a.port, print=lambda s: None, handler_cancellation=True)


if __name__ == "__main__":
    main()
