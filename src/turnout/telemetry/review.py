"""The prompt review log: the one place request text may be kept. Off unless configured.

`telemetry.review_log.enabled: true` turns it on; nothing else does (the constructor refuses a config
that has it off). It has its own SQLite file and retention, separate from the metadata-only audit log,
so the two can be kept, copied and deleted under different rules.

What one row holds: request id, time, endpoint, router, route, model, the messages as text, and the few
non-text inputs routing reads (tool names, reasoning effort, response format type). Text is scrubbed
before it is stored: data URLs and base64 blobs become placeholders (`[image]`, `[base64: 5321 chars]`),
as the LLM judge sees them; image and audio parts keep only their type. Completions are never stored.

Writes use the audit log's writer: `capture` appends to an in-memory queue; a thread does the rest.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from turnout.config import Settings
from turnout.strategies.llm import judged_text
from turnout.telemetry.audit import BackgroundWriter, Migration, dumps, insert_many, utc_day
from turnout.types import RequestRecord

MAX_TEXT = 200_000  # characters per text part; longer ones keep head and tail

MIGRATIONS: tuple[Migration, ...] = (
    (
        "0001_prompts",
        (
            """CREATE TABLE prompts (
                id INTEGER PRIMARY KEY,
                ts REAL NOT NULL,
                day TEXT NOT NULL,
                request_id TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                router TEXT,
                route TEXT,
                model TEXT,
                messages TEXT NOT NULL,
                params TEXT NOT NULL
            )""",
            "CREATE INDEX prompts_ts ON prompts (ts)",
            "CREATE INDEX prompts_request_id ON prompts (request_id)",
        ),
    ),
)
COLUMNS = ("ts", "day", "request_id", "endpoint", "router", "route", "model", "messages", "params")


def review_path(settings: Settings) -> Path:
    r = settings.telemetry.review_log
    return Path(r.path) if r.path else Path(settings.runtime_dir) / "review.sqlite3"


def scrub(text: str) -> str:
    return judged_text(text, MAX_TEXT)


def _part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if isinstance(part.get("text"), str):
        return {"type": "text", "text": scrub(part["text"])}
    if kind in ("image_url", "image"):
        return {"type": "image_url", "image_url": {"url": "[image]"}}
    if kind in ("input_audio", "audio"):
        return {"type": "input_audio", "input_audio": {"data": "[audio]"}}
    return {"type": str(kind)}


def review_messages(messages: Any) -> list[dict[str, Any]]:
    """The messages as stored: roles, text (scrubbed), tool calls with their arguments; no blobs."""
    out: list[dict[str, Any]] = []
    for m in messages if isinstance(messages, list) else ():
        if not isinstance(m, dict):
            continue
        msg: dict[str, Any] = {"role": str(m.get("role"))}
        content = m.get("content")
        if isinstance(content, str):
            msg["content"] = scrub(content)
        elif isinstance(content, list):
            msg["content"] = [_part(p) for p in content if isinstance(p, dict)]
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            msg["tool_calls"] = [
                {
                    "id": c.get("id"),
                    "type": "function",
                    "function": {"name": f.get("name"), "arguments": scrub(str(f.get("arguments") or ""))},
                }
                for c in calls
                if isinstance(c, dict) and isinstance(f := c.get("function"), dict)
            ]
        for key in ("name", "tool_call_id"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        out.append(msg)
    return out


def review_params(body: dict[str, Any]) -> dict[str, Any]:
    """The non-text inputs routing reads, so `turnout replay` sees what the router saw."""
    params: dict[str, Any] = {}
    tools = body.get("tools") or body.get("functions")  # `functions`: the legacy form, names at the top
    if isinstance(tools, list) and tools:
        functions = [t.get("function", t) for t in tools if isinstance(t, dict)]
        names = [f.get("name") if isinstance(f, dict) else None for f in functions]
        params["tools"] = [{"type": "function", "function": {"name": str(n or "tool")}} for n in names]
    for key in ("reasoning_effort", "max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), (str, int)):
            params[key] = body[key]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        params["reasoning"] = {"effort": reasoning["effort"]}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("type"), str):
        params["response_format"] = {"type": fmt["type"]}
    return params


class PromptReviewLog(BackgroundWriter[tuple[RequestRecord, dict[str, Any]]]):
    table = "prompts"
    migrations = MIGRATIONS
    what = "prompt review log"
    name = "review"
    fix = "set `telemetry.review_log.path` to a writable file, or `telemetry.review_log.enabled: false`"

    def __init__(self, settings: Settings) -> None:
        cfg = settings.telemetry.review_log
        if not cfg.enabled:
            raise ValueError("the prompt review log is off (`telemetry.review_log.enabled`); it is never implicit")
        super().__init__(review_path(settings), cfg.retention_days)

    def capture(self, record: RequestRecord, body: dict[str, Any]) -> None:
        """Queue the request's text; the request is finished, so nothing changes `body` any more."""
        self.put((record, body))

    def write(self, conn: sqlite3.Connection, batch: list[tuple[RequestRecord, dict[str, Any]]]) -> int | None:
        rows = [
            (
                r.started_at,
                utc_day(r.started_at),
                r.request_id,
                r.endpoint,
                r.router,
                r.route,
                r.model,
                dumps(review_messages(body.get("messages"))).decode(),
                dumps(review_params(body)).decode(),
            )
            for r, body in batch
        ]
        insert_many(conn, self.table, COLUMNS, rows)
        return None
