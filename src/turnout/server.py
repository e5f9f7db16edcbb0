"""Running the app under uvicorn (uvloop + httptools, no access log), one process or N workers.

On SIGTERM uvicorn stops accepting, lets in-flight requests and streams finish for up to
`server.shutdown_grace_s`, then cancels what is left and runs the app's shutdown.

With N workers, the master makes a directory through which the workers share their metrics (see
turnout.telemetry.metrics), so that `/metrics` covers the whole server whichever worker answers.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import uvicorn

from turnout.app import App, create_app
from turnout.config import Settings, load_config
from turnout.errors import TurnoutError

CONFIG_ENV = "TURNOUT_CONFIG"
METRICS_ENV = "TURNOUT_METRICS_DIR"


def log_config(level: str, fmt: str = "json") -> dict[str, Any]:
    """Logging for `turnout` and `uvicorn` at `level`, and other libraries' warnings, as JSON lines or text
    on stderr (`telemetry.logs.format`); uvicorn's access log stays off."""
    formatter = {"()": f"turnout.telemetry.logs.{'TextFormatter' if fmt == 'text' else 'JsonFormatter'}"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"turnout": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "turnout", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "turnout": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


def app_from_env() -> App:
    """The app factory each worker process calls: the config path travels in `TURNOUT_CONFIG`, the
    directory the workers share metrics through in `TURNOUT_METRICS_DIR`."""
    settings, source = load_config(os.environ.get(CONFIG_ENV) or None)
    app = serving_app(settings, source)
    shared = os.environ.get(METRICS_ENV)
    if shared:
        from turnout.telemetry.metrics import MetricsSink

        for sink in app.telemetry.sinks:
            if isinstance(sink, MetricsSink):
                sink.share(shared)
    return app


def serving_app(settings: Settings, source: str) -> App:
    """The app as `turnout serve` runs it: it owns the process, so it may tune the garbage collector."""
    app = create_app(settings, source)
    app.tune_gc = True
    return app


def serve(
    config_path: str | None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    log_level: str | None = None,
) -> None:
    settings, source = load_config(config_path)  # a config error stops us here, before any socket opens
    s = settings.server
    workers = workers or s.workers
    level = log_level or s.log_level
    options: dict[str, Any] = {
        "host": host or s.host,
        "port": s.port if port is None else port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,  # X-Forwarded-* is not used; uvicorn's middleware for it costs 1-2% CPU
        "timeout_graceful_shutdown": math.ceil(s.shutdown_grace_s),
        "timeout_keep_alive": 30,
        "backlog": 4096,
        "log_config": log_config(level, settings.telemetry.logs.format),
    }
    if workers == 1:
        uvicorn.run(serving_app(settings, source), **options)
    else:
        if config_path:
            os.environ[CONFIG_ENV] = os.path.abspath(config_path)
        else:
            os.environ.pop(CONFIG_ENV, None)
        shared: Path | None = None
        if settings.telemetry.metrics.enabled:
            from turnout.telemetry.siblings import server_directory

            try:
                shared = server_directory(settings.runtime_dir)
            except OSError as exc:
                raise TurnoutError(
                    f"runtime_dir: cannot make the directory through which the workers share metrics ({exc}); "
                    "point runtime_dir at a writable directory, or run one worker"
                ) from exc
            os.environ[METRICS_ENV] = str(shared)
        else:
            os.environ.pop(METRICS_ENV, None)
        try:
            uvicorn.run("turnout.server:app_from_env", factory=True, workers=workers, **options)
        finally:
            if shared is not None:
                shutil.rmtree(shared, ignore_errors=True)
