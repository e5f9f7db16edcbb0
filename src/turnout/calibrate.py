"""`turnout calibrate`: thresholds and margins from labelled JSONL (work in progress)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="JSONL file")


def run(args: argparse.Namespace) -> int:
    print("not implemented yet")
    return 2
