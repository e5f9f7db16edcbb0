"""Rounding on the request path.

`round(x, n)` rounds a float through a correctly rounded decimal conversion: ~0.77 us per call on the
2-core AMD EPYC development VM, where a routed request did five to ten of them (attempt times, strategy
times, the record's latencies, semantic scores). `floor(x * 10**n + 0.5) / 10**n` takes ~0.16 us there.
For the non-negative milliseconds and scores rounded here it gives the same value (ties aside: it rounds
half up) and the same short repr; checked on 200,000 random values over nine decades
(tests/test_numbers.py).
"""

from __future__ import annotations

from math import floor


def round3(x: float) -> float:
    """`x` to 3 decimals (milliseconds to the microsecond)."""
    return floor(x * 1000.0 + 0.5) / 1000.0


def round4(x: float) -> float:
    """`x` to 4 decimals."""
    return floor(x * 10000.0 + 0.5) / 10000.0
