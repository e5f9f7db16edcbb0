from collections.abc import Callable
from typing import Any

from turnout.types import RequestRecord

class Builder:
    def __init__(
        self, prices: dict[str, tuple[float, float, float]], fallback: Callable[..., RequestRecord]
    ) -> None: ...
    def __call__(self, *inputs: Any) -> RequestRecord: ...

def prepare(record: type, context: type, decision: type, target: type, cache_default: str) -> None: ...
def prepare_rows(
    audit_row: Callable[[RequestRecord], list[Any]],
    utc_day_bounds: Callable[[float], tuple[float, float, str]],
    stored_reason: Callable[[RequestRecord], str | None],
    own_reasons: frozenset[str],
    reason_chars: int,
) -> None: ...
def audit_row(record: RequestRecord) -> list[Any]: ...
