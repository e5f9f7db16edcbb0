"""`turnout usage` (work in progress)."""

from __future__ import annotations

import argparse
from typing import Any

from turnout.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    print("not implemented yet")
    return 2


async def usage_report(settings: Settings, query: str) -> dict[str, Any]:
    return {"object": "turnout.usage", "data": []}
