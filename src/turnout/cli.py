"""The `turnout` command: serve, check, route.

Config: `--config F`, else `$TURNOUT_CONFIG`, else `./turnout.yaml` when it exists, else the embedded default.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from turnout import __version__
from turnout.config import Settings, load_config
from turnout.errors import ConfigError, TurnoutError
from turnout.gateway import Gateway
from turnout.types import RequestContext
from turnout.upstreams import build_upstream


def resolve_config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    if os.environ.get("TURNOUT_CONFIG"):
        return os.environ["TURNOUT_CONFIG"]
    return "turnout.yaml" if os.path.exists("turnout.yaml") else None


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


# --- serve -------------------------------------------------------------------------------


def cmd_serve(a: argparse.Namespace) -> int:
    from turnout.server import serve  # uvicorn is imported only when serving

    serve(resolve_config_path(a.config), a.host, a.port, a.workers, a.log_level)
    return 0


# --- check -------------------------------------------------------------------------------


async def _probe_all(settings: Settings, timeout_s: float) -> dict[str, tuple[bool | None, str, list[str]]]:
    upstreams = {n: build_upstream(n, c) for n, c in settings.upstreams.items()}
    try:
        results = await asyncio.gather(*(u.probe(timeout_s) for u in upstreams.values()))
    finally:
        for u in upstreams.values():
            await u.close()
    return dict(zip(upstreams, results, strict=True))


def cmd_check(a: argparse.Namespace) -> int:
    settings, source = load_config(resolve_config_path(a.config))
    probes = {} if a.no_probe else asyncio.run(_probe_all(settings, a.timeout))
    rows = [["upstream", "url", "status", "models"]]
    report: dict[str, Any] = {"config": source, "valid": True, "upstreams": {}}
    for name, up in settings.upstreams.items():
        ok, status, ids = probes.get(name, (None, "not probed", []))
        wanted = sorted({m.name for m in settings.models.values() if m.upstream == name})
        missing = [m for m in wanted if ids and m not in ids]
        note = f"missing: {', '.join(missing)}" if missing else (f"{len(ids)} listed" if ids else "-")
        rows.append([name, up.base_url, status, note])
        report["upstreams"][name] = {"reachable": ok, "status": status, "missing_models": missing}
    unreachable = [n for n, p in probes.items() if not p[0]]
    if a.json:
        _print_json(report)
    else:
        print(f"config OK: {source}")
        print(f"routers: {', '.join(settings.routers) or '-'}; routes: {', '.join(settings.routes)}")
        print(_table(rows))
        if unreachable:
            print(f"\nnot reachable: {', '.join(unreachable)}")
    return 1 if unreachable else 0


# --- route -------------------------------------------------------------------------------


def cmd_route(a: argparse.Namespace) -> int:
    settings, _ = load_config(resolve_config_path(a.config))
    upstreams = {n: build_upstream(n, c) for n, c in settings.upstreams.items()}  # built, never called
    gateway = Gateway(settings, upstreams)
    model = a.router or next(iter(settings.routers), next(iter(settings.routes)))
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": a.text}]}
    ctx = RequestContext(uuid.uuid4().hex, body, model, False, a.route, "`--route`" if a.route else None)

    async def explain() -> dict[str, Any]:
        try:
            await gateway.start()
            return await gateway.explain(ctx)
        finally:  # an `llm` strategy may have called its judge: close what it opened
            await gateway.close()
            for up in upstreams.values():
                await up.close()

    out = asyncio.run(explain())
    if a.json:
        _print_json(out)
        return 0
    d = out["decision"]
    conf = "-" if d["confidence"] is None else f"{d['confidence']:.3f}"
    print(f"router:     {d['router'] or '-'}")
    print(f"route:      {d['route']}")
    print(f"strategy:   {d['strategy']} ({d['reason']})")
    print(f"confidence: {conf}")
    print(f"targets:    {' -> '.join(t['model'] for t in out['targets'])}")
    print(f"decided in: {d['elapsed_ms']:.3f} ms")
    return 0


EXTRA_COMMANDS = [
    ("train", "turnout.training", "train a classifier artifact from labelled JSONL"),
    ("eval", "turnout.evaluate", "routing quality report on labelled JSONL"),
    ("calibrate", "turnout.calibrate", "choose thresholds and margins from labelled JSONL; write a config patch"),
    ("usage", "turnout.usage", "requests, tokens, cost and savings from the audit log"),
    ("replay", "turnout.replay", "re-decide logged requests under another config and show what would change"),
    ("report", "turnout.report", "daily health summary from the audit log; exit 1 when a threshold is crossed"),
]


# --- banks -------------------------------------------------------------------------------


def cmd_banks(a: argparse.Namespace) -> int:
    from turnout.banks import keyword_banks, utterance_banks

    kinds = {"utterances": utterance_banks(), "keywords": keyword_banks()}
    if a.show:
        for kind, banks in kinds.items():
            if a.show in banks:
                print(f"# {kind} bank `{a.show}`")
                print("\n".join(banks[a.show]))
                return 0
        print(f"turnout: no built-in bank `{a.show}`", file=sys.stderr)
        return 1
    for kind, banks in kinds.items():
        use = "routes.<name>.banks" if kind == "utterances" else "routers.<name>.rules[].banks"
        print(f"{kind} banks (for `{use}`):")
        for name, entries in banks.items():
            print(f"  {name:<20} {len(entries)} entries")
    return 0


# --- main --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="turnout", description="An OpenAI-compatible LLM routing gateway.")
    ap.add_argument("--version", action="version", version=f"turnout {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help="config file (default: $TURNOUT_CONFIG, ./turnout.yaml, embedded default)")
        return p

    p = add("serve", "start the gateway")
    p.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: server.port, 4001)")
    p.add_argument("--workers", type=int, help="worker processes, one per core to use (default: server.workers)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = add("check", "validate the config and probe every upstream; exit 1 when one is unreachable")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-probe", action="store_true", help="validate only; contact nothing")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per probe (default 3)")
    p.set_defaults(func=cmd_check)

    p = add("route", "print the routing decision for TEXT (no completion is requested; an `llm` judge is asked)")
    p.add_argument("text")
    p.add_argument("--router", help="router (or route) to ask, as a client's `model` (default: the first router)")
    p.add_argument("--route", help="an explicit route hint, as `x-turnout-route` would give")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("banks", help="list the built-in utterance and keyword banks", description="list the "
                       "built-in utterance and keyword banks (English and Chinese)")  # fmt: skip
    p.add_argument("--show", metavar="NAME", help="print one bank's entries")
    p.set_defaults(func=cmd_banks)

    # Commands whose code lives in their own modules; each module has add_arguments(parser) and run(args).
    for name, module, help_ in EXTRA_COMMANDS:
        p = add(name, help_)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        code: int = a.func(a)
    except ConfigError as exc:
        print(f"turnout: {exc.message}", file=sys.stderr)
        return 2
    except TurnoutError as exc:
        print(f"turnout: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `turnout ... | head`
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
