"""The request path's fast rounding against Python's correctly rounded `round`."""

from __future__ import annotations

import math
import random

from turnout.numbers import round3, round4


def test_fast_rounding_gives_round_s_value_except_on_ties() -> None:
    rng = random.Random(7)
    for _ in range(200_000):
        x = rng.random() * 10.0 ** rng.randint(-4, 5)
        for fast, digits in ((round3, 3), (round4, 4)):
            got, want = fast(x), round(x, digits)
            if got != want:  # only a tie (or a hair from one) may differ: half up, not half even
                scaled = x * 10**digits
                assert abs(scaled - math.floor(scaled) - 0.5) < 1e-6, (x, digits, got, want)
                assert abs(got - want) <= 10.0**-digits * 1.000001


def test_fast_rounding_on_exact_values() -> None:
    assert round3(0.0) == 0.0
    assert round3(3.6) == 3.6
    assert round3(1.23456) == 1.235
    assert round4(0.41234) == 0.4123
    assert round3(0.1 + 0.2) == 0.3
    assert repr(round3(2.3456789)) == "2.346"
