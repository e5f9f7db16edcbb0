"""Every error turnout raises, and the one place its OpenAI-shaped body is rendered.

TurnoutError                      500 api_error
├── ConfigError                   (load time; never reaches a client)
├── RequestError                  400 invalid_request_error
│   ├── BodyTooLarge              413
│   ├── ModelNotFound             404 model_not_found
│   ├── NoCapableTarget           400 no_capable_target
│   ├── PathNotFound              404
│   └── MethodNotAllowed          405
├── AuthError                     401 invalid_api_key
├── UpstreamError                 502 upstream_error (one attempt; proxy keeps them all)
│   ├── UpstreamConnectError      502 connect
│   ├── UpstreamTimeout           504 timeout
│   ├── UpstreamDropped           502 connection dropped
│   └── UpstreamStatus            the upstream answered with an error status
├── UpstreamClientError           the upstream's own 4xx, passed through with its status
└── AllTargetsFailed              502; 504 when every attempt timed out, 429 when all were rate limited
"""

from __future__ import annotations

from typing import Any

import orjson


class TurnoutError(Exception):
    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


class ConfigError(TurnoutError):
    """A config problem; `message` names the dotted path and the fix."""


class RequestError(TurnoutError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(RequestError):
    status = 413
    code = "body_too_large"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"


class NoCapableTarget(RequestError):
    code = "no_capable_target"


class PathNotFound(RequestError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RequestError):
    status = 405
    code = "method_not_allowed"


class ClassificationFailed(TurnoutError):
    """A strategy could not run (its encoder or judge failed). Never reaches a client: the router
    records it and goes on to the next strategy or the fallback route."""

    code = "classification_failed"


class AuthError(TurnoutError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class UpstreamError(TurnoutError):
    """One failed attempt at one upstream. `kind` is a short, bounded error class for records."""

    status = 502
    type = "upstream_error"
    kind = "upstream_error"
    retryable = True


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamTimeout(UpstreamError):
    status = 504
    kind = "timeout"


class UpstreamDropped(UpstreamError):
    kind = "dropped"


class UpstreamStatus(UpstreamError):
    retry_after: float | None

    def __init__(self, message: str, *, upstream_status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.kind = "rate_limited" if upstream_status == 429 else f"http_{upstream_status}"


class UpstreamClientError(TurnoutError):
    """The upstream refused the request itself (a 4xx other than 401/403/408/429): passed through, not retried."""

    def __init__(self, status: int, message: str, type_: str, param: str | None, code: str | None) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        self.type = type_


class AllTargetsFailed(TurnoutError):
    type = "upstream_error"
    code = "all_targets_failed"

    def __init__(self, route: str, attempts: list[tuple[str, UpstreamError]]) -> None:
        tried = "; ".join(f"`{target}`: {err.kind}" for target, err in attempts) or "no target was tried"
        super().__init__(f"every target of route `{route}` failed ({tried})")
        self.attempts = attempts
        kinds = {err.kind for _, err in attempts}
        if kinds == {"timeout"}:
            self.status = 504
        elif kinds == {"rate_limited"}:  # every target is busy: say so, so clients back off
            self.status, self.type, self.code = 429, "rate_limit_error", "rate_limit_exceeded"
        else:
            self.status = 502


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    payload: dict[str, Any] = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return orjson.dumps(payload)
