"""The one compiled part: telemetry's usage reader (src/turnout/telemetry/_usage.c). Optional: where it
cannot be built (no C compiler), the install goes on and turnout uses the same function in Python
(turnout.telemetry.meter). Everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("turnout.telemetry._usage", ["src/turnout/telemetry/_usage.c"], optional=True)])
