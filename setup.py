"""The compiled parts of telemetry (src/turnout/telemetry/): the usage reader (_usage.c) and the record
and audit row builder (_record.c). Optional: where they cannot be built (no C compiler), the install goes
on and turnout runs the same functions in Python (telemetry.meter, telemetry.record, telemetry.audit).
Everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("turnout.telemetry._usage", ["src/turnout/telemetry/_usage.c"], optional=True),
        # -ffp-contract=off: a cost is `a * x + b * y` term by term, as Python computes it; a fused
        # multiply-add would round once instead of twice and could differ from it in the last bit.
        Extension(
            "turnout.telemetry._record",
            ["src/turnout/telemetry/_record.c"],
            extra_compile_args=["-ffp-contract=off"],
            optional=True,
        ),
    ]
)
