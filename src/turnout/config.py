"""The config file: a closed schema, `${ENV}` references, dotted-path errors, the embedded default.

Loading is pure: `load_config` reads, interpolates and validates, and builds nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from turnout.errors import ConfigError

NAME = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/?=&@+-]*$", max_length=128)]
Capability = Literal["tools", "vision", "audio", "json_mode"]
STRATEGY_NAMES = ("explicit", "rules", "semantic", "classifier", "llm")


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Closed):
    host: str = Field("127.0.0.1", description="address to listen on (`0.0.0.0` for every interface)")
    port: int = Field(4001, ge=0, le=65535, description="port to listen on")
    workers: int = Field(1, ge=1, le=256, description="worker processes; one per core you want to use")
    shutdown_grace_s: float = Field(30.0, ge=0, description="on SIGTERM, how long in-flight requests may finish")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="larger request bodies get a 413")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")


class AuthConfig(Closed):
    keys: list[str] = Field(default_factory=list, description="inbound API keys; empty: no auth")


class UpstreamConfig(Closed):
    kind: Literal["openai"] = Field("openai", description="protocol; `openai` is every OpenAI-compatible server")
    base_url: str = Field(pattern=r"^https?://", description="up to and including `/v1`")
    api_key: str = Field("", description="sent as `Authorization: Bearer`; use `${ENV}`, never a literal")
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers on every request")
    connect_timeout_s: float = Field(5.0, gt=0, description="TCP connect timeout")
    first_byte_timeout_s: float = Field(
        120.0, gt=0, description="wait for the response headers; also the longest pause between stream chunks"
    )
    max_connections: int = Field(512, ge=1, description="pooled keep-alive connections to this upstream")
    stream_usage: bool = Field(
        False,
        description="ask for usage at the end of every stream (`stream_options.include_usage`), so streamed "
        "tokens and cost are reported, not estimated; the usage event is taken out for clients that did not ask",
    )


class ModelConfig(Closed):
    upstream: str = Field(description="name of an entry under `upstreams`")
    name: str = Field(min_length=1, description="the model id the upstream knows")
    input_price: float = Field(0.0, ge=0, description="USD per 1M input tokens")
    output_price: float = Field(0.0, ge=0, description="USD per 1M output tokens")
    cached_input_price: float | None = Field(
        None, ge=0, description="USD per 1M input tokens the upstream served from its prompt cache; null: input_price"
    )
    context_window: int | None = Field(None, ge=1, description="tokens; longer requests skip this model")
    capabilities: list[Capability] | None = Field(
        None, description="what it can do; requests needing more skip it; null: assume anything"
    )

    @property
    def cached_price(self) -> float:
        """USD per 1M cached input tokens: `cached_input_price`, else `input_price`."""
        return self.input_price if self.cached_input_price is None else self.cached_input_price

    def cost_usd(self, prompt: int, completion: int, cached: int = 0) -> float:
        """USD for these tokens; `cached` is the part of `prompt` the upstream served from its cache."""
        if cached <= 0:  # the usual case: no min, no max
            return (prompt * self.input_price + completion * self.output_price) / 1e6
        cached = min(cached, prompt)
        fresh = prompt - cached
        return (fresh * self.input_price + cached * self.cached_price + completion * self.output_price) / 1e6


class RouteConfig(Closed):
    description: str = Field("", description="what the route is for; shown in `/v1/models` and to the LLM judge")
    targets: list[str] = Field(min_length=1, description="names under `models`, in fallback order")
    utterances: list[str] = Field(default_factory=list, description="example requests for the semantic strategy")
    banks: list[str] = Field(default_factory=list, description="built-in utterance banks to add (`turnout banks`)")
    threshold: float | None = Field(None, description="semantic threshold for this route; overrides the router's")


class EncoderConfig(Closed):
    kind: Literal["use", "sentence-transformers", "openai"] = Field(
        "use", description="`use`: the bundled multilingual USE; a local sentence-transformers dir; a remote API"
    )
    threads: int = Field(1, ge=1, le=64, description="threads for a local encoder; at most the cores you may use")
    runtime: Literal["onnxruntime", "onnxruntime-int8", "numpy"] = Field(
        "onnxruntime",
        description="how `use` runs its forward pass: ONNX Runtime (~2x faster) or the package's numpy code, "
        "same vectors either way; `onnxruntime-int8`: int8 weights, ~2x faster again, slightly other vectors. "
        "`sentence-transformers`: `onnxruntime` runs the directory's ONNX export when it has one (no torch), "
        "else the sentence-transformers package; `onnxruntime-int8` quantizes the export",
    )
    max_tokens: int = Field(
        48,
        ge=8,
        le=4096,
        description="longer texts are cut to about this many tokens (head and tail) before a "
        "local encoder sees them: encoding time grows with length",
    )
    path: str | None = Field(None, description="model directory, for `sentence-transformers`")
    upstream: str | None = Field(None, description="upstream serving `/v1/embeddings`, for `openai`")
    model: str | None = Field(None, description="embedding model id, for `openai`")
    timeout_s: float = Field(2.0, gt=0, description="an encoder slower than this fails open to the fallback")


class RuleConfig(Closed):
    name: str = Field(min_length=1, description="shown in the decision's reason")
    route: str = Field(description="the route this rule sends to; one of the router's routes")
    keywords: list[str] = Field(default_factory=list, description="phrases, case-insensitive")
    banks: list[str] = Field(default_factory=list, description="built-in keyword banks (`turnout banks`)")
    regex: list[str] = Field(default_factory=list, description="Python regular expressions, case-insensitive")
    has_tools: bool | None = Field(None, description="require (true) or forbid (false) tools in the request")
    has_images: bool | None = Field(None, description="require or forbid image parts")
    min_tokens: int | None = Field(None, ge=0, description="estimated prompt tokens at least this")
    max_tokens: int | None = Field(None, ge=0, description="estimated prompt tokens at most this")
    min_turns: int | None = Field(None, ge=0, description="user turns at least this")
    languages: list[str] | None = Field(None, description="detected language is one of these (`en`, `zh`, ...)")
    reasoning_effort: list[str] | None = Field(None, description="requested `reasoning_effort` is one of these")


class SemanticConfig(Closed):
    encoder: str = Field("default", description="name under `encoders`")
    top_k: int = Field(3, ge=1, le=50, description="a route scores the mean of its k best utterance matches")
    dense_weight: float = Field(0.75, ge=0, le=1, description="score = w * dense cosine + (1 - w) * sparse")
    threshold: float = Field(0.15, description="best route score below this: abstain")
    margin: float = Field(0.03, ge=0, description="best minus second-best below this: abstain")


class ClassifierConfig(Closed):
    artifact: str = Field(description="file written by `turnout train`")
    encoder: str = Field("default", description="name under `encoders`; the one the artifact was trained with")
    threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="category: top probability below this abstains; cost: the cheapest route whose "
        "P(good enough) is at least this answers, else the strongest",
    )
    margin: float = Field(0.0, ge=0, description="category mode: top minus second probability below this abstains")


class LLMJudgeConfig(Closed):
    model: str = Field(description="name under `models` that judges: its upstream and model id are used")
    timeout_s: float = Field(
        3.0, gt=0, description="hard limit on the whole judge call; slower fails open to the next strategy"
    )
    threshold: float = Field(0.5, ge=0, le=1, description="a verdict less confident than this does not decide")
    cache_size: int = Field(
        10000, ge=0, description="verdicts kept (LRU), keyed by a hash of router and classified text; 0: none"
    )
    max_chars: int = Field(
        4000, ge=100, description="the judge sees at most this much text (head and tail kept), blobs replaced"
    )


class ConversationConfig(Closed):
    window: int = Field(2, ge=0, le=20, description="earlier user turns classified with the latest one")
    sticky: bool = Field(True, description="mid tool loop, keep the conversation's route instead of re-deciding")
    session_ttl_s: float = Field(3600.0, gt=0, description="how long a conversation's route is remembered")
    max_sessions: int = Field(100000, ge=1, description="conversations remembered per process")


class RouterConfig(Closed):
    description: str = Field("", description="shown in `/v1/models`")
    routes: list[str] = Field(min_length=1, description="routes this router chooses among")
    strategies: list[str] = Field(default_factory=lambda: ["explicit"], description="tried in order")
    fallback: str = Field(description="the route when every strategy abstains; one of `routes`")
    max_chars: int = Field(2000, ge=50, description="classified text cap; head and tail kept")
    rules: list[RuleConfig] = Field(default_factory=list, description="for the `rules` strategy, first match wins")
    semantic: SemanticConfig = Field(default_factory=SemanticConfig, description="for the `semantic` strategy")
    classifier: ClassifierConfig | None = Field(None, description="for the `classifier` strategy")
    llm: LLMJudgeConfig | None = Field(None, description="for the `llm` strategy")
    conversation: ConversationConfig = Field(default_factory=ConversationConfig, description="multi-turn handling")


class PassthroughConfig(Closed):
    enabled: bool = Field(False, description="send a `model` that names no router or route on, unchanged")
    upstream: str | None = Field(None, description="the upstream that receives those requests")


class ProxyConfig(Closed):
    attempts_per_target: int = Field(2, ge=1, le=10, description="tries per target before the next one")
    backoff_s: float = Field(0.05, ge=0, description="wait before a retry, doubled each time")
    retry_after_cap_s: float = Field(
        2.0, ge=0, description="honour a 429's `Retry-After` up to this; longer means go to the next target"
    )
    unhealthy_after: int = Field(
        3, ge=1, le=1000, description="consecutive failed attempts after which an upstream's targets are tried last"
    )
    unhealthy_cooldown_s: float = Field(
        10.0, ge=0, description="how long an upstream stays marked down after its latest failure (0: never)"
    )


class MetricsConfig(Closed):
    enabled: bool = Field(True, description="Prometheus metrics at `GET /metrics`")


class AuditConfig(Closed):
    enabled: bool = Field(True, description="metadata-only audit log of every request (never text)")
    sqlite_path: str | None = Field(None, description="SQLite file; default `<runtime_dir>/audit.sqlite3`")
    jsonl_path: str | None = Field(None, description="also write rotating JSONL here")
    jsonl_max_bytes: int = Field(50_000_000, ge=1000, description="rotate the JSONL file at this size")
    jsonl_backups: int = Field(5, ge=0, description="rotated JSONL files kept")
    retention_days: float = Field(
        30.0, gt=0, description="a UTC day's audit rows are deleted once all of the day is older than this"
    )
    flush_s: float = Field(
        0.5, gt=0, le=60, description="records wait in memory at most this long; a writer thread writes them"
    )


class ReviewLogConfig(Closed):
    enabled: bool = Field(False, description="OFF by default: also store prompts, for private deployments")
    path: str | None = Field(None, description="SQLite file; default `<runtime_dir>/review.sqlite3`")
    retention_days: float = Field(7.0, gt=0, description="reviewed prompts older than this are deleted")


class TracingConfig(Closed):
    enabled: bool = Field(False, description="OpenTelemetry spans per request (no prompt text)")
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://",
        description="OTLP/HTTP collector URL (`/v1/traces` added to a bare host); default from `OTEL_EXPORTER_OTLP_*`",
    )
    service_name: str = Field("turnout", min_length=1, description="`service.name` of the spans")
    headers: dict[str, str] = Field(default_factory=dict, description="extra OTLP headers (use `${ENV}`)")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of requests traced, chosen by trace id")


class LogsConfig(Closed):
    format: Literal["json", "text"] = Field("json", description="structured JSON lines, or plain text")
    requests: bool = Field(False, description="one `turnout.requests` line per finished request (metadata only)")


class ReportConfig(Closed):
    max_error_rate: float = Field(0.05, ge=0, le=1, description="`turnout report` fails above this error share")
    max_fallback_rate: float = Field(0.2, ge=0, le=1, description="... above this share of fallback decisions")
    max_low_confidence: float = Field(0.3, ge=0, le=1, description="... above this share of low-confidence decisions")
    max_p95_ms: float = Field(
        30000.0, gt=0, description="... above this p95 response time (a stream's: its time to first token)"
    )
    max_share_drift: float = Field(
        0.15, ge=0, le=1, description="... when a route's share moves more than this from the previous day"
    )
    low_confidence_band: float = Field(
        0.05, ge=0, description="a decision that cleared its threshold by less than this counts as low-confidence"
    )
    min_requests: int = Field(20, ge=1, description="days with fewer requests are summarised but never fail")


class TelemetryConfig(Closed):
    batch_delay_s: float = Field(
        0.05, gt=0, le=10,
        description="a finished request's record waits at most this long for others (batches of up to 128 cost "
        "less CPU per record) before the sinks see it",
    )  # fmt: skip
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="audit log")
    review_log: ReviewLogConfig = Field(default_factory=ReviewLogConfig, description="prompt review log (opt-in)")
    tracing: TracingConfig = Field(default_factory=TracingConfig, description="OpenTelemetry")
    logs: LogsConfig = Field(default_factory=LogsConfig, description="log format")
    report: ReportConfig = Field(default_factory=ReportConfig, description="`turnout report` thresholds")


class Settings(Closed):
    server: ServerConfig = Field(default_factory=ServerConfig, description="listening and limits")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="inbound authentication")
    upstreams: dict[NAME, UpstreamConfig] = Field(min_length=1, description="provider endpoints")
    models: dict[NAME, ModelConfig] = Field(min_length=1, description="concrete models on upstreams")
    routes: dict[NAME, RouteConfig] = Field(min_length=1, description="named destinations clients may ask for")
    routers: dict[NAME, RouterConfig] = Field(default_factory=dict, description="virtual models that decide")
    encoders: dict[NAME, EncoderConfig] = Field(
        default_factory=lambda: {"default": EncoderConfig()}, description="sentence encoders; `default` is USE"
    )
    runtime_dir: str = Field(".turnout", description="caches (utterance embeddings) and local state")
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, description="metrics, audit, traces, logs")
    passthrough: PassthroughConfig = Field(default_factory=PassthroughConfig, description="unknown model names")
    proxy: ProxyConfig = Field(default_factory=ProxyConfig, description="retries and fallback")
    expose_models: bool = Field(False, description="list target model ids in /v1/models")

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        problems = list(_cross_reference_problems(self))
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _cross_reference_problems(s: Settings) -> list[str]:
    out: list[str] = []
    for name, model in s.models.items():
        if model.upstream not in s.upstreams:
            out.append(f"models.{name}.upstream: upstream `{model.upstream}` is not defined under `upstreams`")
    for name, route in s.routes.items():
        for i, target in enumerate(route.targets):
            if target not in s.models:
                out.append(f"routes.{name}.targets[{i}]: model `{target}` is not defined under `models`")
    for name, router in s.routers.items():
        if name in s.routes:
            out.append(f"routers.{name}: `{name}` is also a route; a client model name must mean one thing")
        for i, route_name in enumerate(router.routes):
            if route_name not in s.routes:
                out.append(f"routers.{name}.routes[{i}]: route `{route_name}` is not defined under `routes`")
        if router.fallback not in router.routes:
            out.append(f"routers.{name}.fallback: `{router.fallback}` is not one of this router's routes")
        for i, strategy in enumerate(router.strategies):
            if strategy not in STRATEGY_NAMES:
                valid = ", ".join(f"`{n}`" for n in STRATEGY_NAMES)
                out.append(f"routers.{name}.strategies[{i}]: unknown strategy `{strategy}`; valid: {valid}")
        out += _router_strategy_problems(s, name, router)
    out += _encoder_problems(s)
    p = s.passthrough
    if p.enabled and p.upstream is None:
        out.append("passthrough.upstream: passthrough is enabled; name the upstream that receives unknown models")
    if p.upstream is not None and p.upstream not in s.upstreams:
        out.append(f"passthrough.upstream: upstream `{p.upstream}` is not defined under `upstreams`")
    return out


def _router_strategy_problems(s: Settings, name: str, router: RouterConfig) -> list[str]:
    out: list[str] = []
    path = f"routers.{name}"
    for i, rule in enumerate(router.rules):
        if rule.route not in router.routes:
            out.append(f"{path}.rules[{i}].route: `{rule.route}` is not one of this router's routes")
        for j, pattern in enumerate(rule.regex):
            try:
                re.compile(pattern)
            except re.error as exc:
                out.append(f"{path}.rules[{i}].regex[{j}]: not a valid regular expression ({exc})")
    if "rules" in router.strategies and not router.rules:
        out.append(f"{path}.rules: the `rules` strategy is on; add at least one rule")
    if "semantic" in router.strategies:
        if router.semantic.encoder not in s.encoders:
            out.append(f"{path}.semantic.encoder: encoder `{router.semantic.encoder}` is not defined under `encoders`")
        bare = [r for r in router.routes if r in s.routes and not (s.routes[r].utterances or s.routes[r].banks)]
        if len(bare) == len(router.routes):
            out.append(f"{path}: the `semantic` strategy needs `utterances` or `banks` on at least one route")
    if "classifier" in router.strategies and router.classifier is None:
        out.append(f"{path}.classifier: the `classifier` strategy is on; set `classifier.artifact`")
    if "llm" in router.strategies:
        if router.llm is None:
            out.append(f"{path}.llm: the `llm` strategy is on; set `llm.model`")
        elif router.llm.model not in s.models:
            out.append(f"{path}.llm.model: model `{router.llm.model}` is not defined under `models`")
    return out


def _encoder_problems(s: Settings) -> list[str]:
    out: list[str] = []
    for name, enc in s.encoders.items():
        if enc.kind == "sentence-transformers" and not enc.path:
            out.append(f"encoders.{name}.path: a `sentence-transformers` encoder needs the model directory")
        if enc.kind == "sentence-transformers" and enc.runtime == "numpy":
            out.append(
                f"encoders.{name}.runtime: `numpy` is for the bundled `use`; a sentence-transformers directory runs "
                "on `onnxruntime` (its ONNX export, else the sentence-transformers package) or `onnxruntime-int8`"
            )
        if enc.kind == "openai":
            if enc.upstream not in s.upstreams:
                out.append(f"encoders.{name}.upstream: name an upstream under `upstreams` that serves embeddings")
            if not enc.model:
                out.append(f"encoders.{name}.model: name the embedding model")
    return out


# --- ${ENV} references -------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(node: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a parsed YAML tree."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in env:
                return env[var]
            if default is not None:
                return default
            raise ConfigError(
                f"{path}: environment variable `{var}` is not set; set it, or write `${{{var}:-}}` to allow empty"
            )

        return _ENV_REF.sub(sub, node)
    return node


# --- loading --------------------------------------------------------------------------------


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{_dotted(loc)}: unknown key; remove it or check its spelling"
    if kind == "missing":
        return f"{_dotted(loc)}: required key is missing"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ").replace("\n", "\n  ")
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"{_dotted(loc)}: {err['msg']}{shown}"


def validate(raw: Any, env: Mapping[str, str] | None = None) -> Settings:
    """Interpolate and validate a parsed config tree; ConfigError lists every problem."""
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping of sections (`upstreams`, `models`, ...)")
    tree = interpolate(raw, os.environ if env is None else env)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> tuple[Settings, str]:
    """Load `path`, or the embedded default when None. Returns the settings and a description of the source."""
    env = os.environ if env is None else env
    if path is None:
        return validate(default_config_tree(env), env), "embedded default (no config file)"
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file `{p}`: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ConfigError(f"config file `{p}` is not valid YAML{at}") from None
    return validate(raw, env), f"file {p}"


CATEGORY_ROUTES = {
    "code": ("deep-model", "programming: write, fix or explain code"),
    "math": ("deep-model", "calculation, algebra, calculus, probability"),
    "translation": ("lite-model", "translate text between languages"),
    "writing": ("lite-model", "write or rewrite prose: letters, posts, stories"),
    "reasoning": ("deep-model", "logic, analysis, decisions with trade-offs"),
    "chat": ("lite-model", "small talk and everyday questions"),
}
ESCALATIONS = ("security_incident", "leaked_credentials", "production_outage", "data_loss")


def default_config_tree(env: Mapping[str, str]) -> dict[str, Any]:
    """The embedded default: one OpenAI-compatible upstream, routers `auto` (lite/deep, with escalation
    rules and the built-in bilingual banks) and `auto-category` (six task categories)."""
    other = {"lite-model": "deep-model", "deep-model": "lite-model"}
    routes: dict[str, Any] = {
        "lite": {"description": "quick, everyday requests: chat, facts, short rewrites",
                 "targets": ["lite-model", "deep-model"], "banks": ["lite"]},
        "deep": {"description": "hard work: reasoning, proofs, system design, difficult code and analysis",
                 "targets": ["deep-model", "lite-model"], "banks": ["deep"]},
    }  # fmt: skip
    for name, (model, desc) in CATEGORY_ROUTES.items():
        routes[name] = {"description": desc, "targets": [model, other[model]], "banks": [name]}
    return {
        "upstreams": {
            "default": {
                "base_url": "${TURNOUT_UPSTREAM_URL:-http://127.0.0.1:11434/v1}",
                "api_key": "${TURNOUT_UPSTREAM_KEY:-}",
            }
        },
        "models": {
            "lite-model": {"upstream": "default", "name": "${TURNOUT_LITE_MODEL:-llama3.2}"},
            "deep-model": {"upstream": "default", "name": "${TURNOUT_DEEP_MODEL:-qwen2.5:14b}"},
        },
        "routes": routes,
        "routers": {
            "auto": {
                "description": "chooses between lite and deep",
                "routes": ["lite", "deep"],
                "strategies": ["explicit", "rules", "semantic"],
                "fallback": "lite",
                "rules": [{"name": n, "route": "deep", "banks": [n]} for n in ESCALATIONS],
                # A wide margin: when lite and deep are close, the cheap fallback answers.
                "semantic": {"threshold": 0.18, "margin": 0.1},
            },
            "auto-category": {
                "description": "chooses a task category: code, math, translation, writing, reasoning or chat",
                "routes": list(CATEGORY_ROUTES),
                "strategies": ["explicit", "semantic"],
                "fallback": "chat",
                "semantic": {"threshold": 0.1, "margin": 0.01},
            },
        },
        "auth": {"keys": [k for k in env.get("TURNOUT_API_KEYS", "").split(",") if k]},
    }
