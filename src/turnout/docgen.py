"""Generate the reference pages that would drift if written by hand: config keys and CLI help.

python -m turnout.docgen          # rewrites docs/reference/config.md and docs/reference/cli.md
python -m turnout.docgen --check  # exits 1 when they are out of date (the test suite runs this)
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from turnout.cli import build_parser
from turnout.config import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reference"


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    args = typing.get_args(t)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        inner = _model_of(args[0])[0]
        return "list of sections" if inner is not None else f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[1])}"
    if isinstance(t, type) and issubclass(t, BaseModel):
        return "section"
    return "null" if t is type(None) else getattr(t, "__name__", str(t))


def _model_of(t: Any) -> tuple[type[BaseModel] | None, str]:
    """The section model inside a field type, and the path suffix (`.<name>` for maps)."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):  # an optional section: document its model
        for arg in typing.get_args(t):
            found = _model_of(arg)
            if found[0] is not None:
                return found
    if origin is list:
        inner, _ = _model_of(typing.get_args(t)[0])
        return inner, "[]"
    if origin is dict:
        inner, _ = _model_of(typing.get_args(t)[1])
        return inner, ".<name>"
    if isinstance(t, type) and issubclass(t, BaseModel):
        return t, ""
    return None, ""


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            made = field.default_factory()  # type: ignore[call-arg]
            default = "" if isinstance(made, BaseModel) else f"`{made!r}`"
        else:
            default = "`null`" if field.default is None else f"`{field.default!r}`"
        rows.append(f"| `{path}` | {_type_name(field.annotation)} | {default} | {field.description or ''} |")
        sub, suffix = _model_of(field.annotation)
        if sub is not None:
            rows += _rows(sub, f"{path}{suffix}.")
    return rows


def config_reference() -> str:
    head = [
        "# Configuration reference",
        "",
        "Generated from `turnout.config` by `python -m turnout.docgen`; do not edit by hand.",
        "Every section rejects unknown keys. Strings may use `${VAR}` or `${VAR:-default}`.",
        "`<name>` stands for a name you choose. Prices are USD per 1M tokens.",
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    return "\n".join(head + _rows(Settings, "")) + "\n"


def cli_reference() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the page must not depend on it
    parser = build_parser()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    out = [
        "# CLI reference",
        "",
        "Generated from `turnout.cli` by `python -m turnout.docgen`; do not edit by hand.",
        "",
    ]
    out += ["```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        out += [f"## turnout {name}", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(out)


PAGES = {"config.md": config_reference, "cli.md": cli_reference}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="regenerate docs/reference")
    ap.add_argument("--check", action="store_true", help="exit 1 when a page is out of date")
    a = ap.parse_args(argv)
    stale = []
    for name, make in PAGES.items():
        path, text = DOCS / name, make()
        if a.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run `python -m turnout.docgen`): " + ", ".join(stale), file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
