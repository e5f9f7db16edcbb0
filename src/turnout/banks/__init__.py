"""Built-in banks shipped with turnout: example utterances per route and escalation keywords.

Written by us, in English and Chinese. `utterances.yaml` maps a bank name to example requests;
`keywords.yaml` maps a bank name to phrases for the `rules` strategy.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml

from turnout.errors import ConfigError


@cache
def _load(kind: str) -> dict[str, list[str]]:
    text = resources.files(__package__).joinpath(f"{kind}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return {str(k): [str(x) for x in v] for k, v in data.items()}


def utterance_banks() -> dict[str, list[str]]:
    return _load("utterances")


def keyword_banks() -> dict[str, list[str]]:
    return _load("keywords")


def bank(kind: str, name: str, where: str) -> list[str]:
    banks = _load(kind)
    if name not in banks:
        raise ConfigError(f"{where}: no built-in {kind} bank `{name}`; available: {', '.join(sorted(banks))}")
    return banks[name]
