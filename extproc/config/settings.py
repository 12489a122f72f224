"""Typed, frozen llmux configuration: YAML file -> validated structs.

`${VAR}` in the file expands from the environment mapping passed in (os.environ
unless told otherwise); everything a request depends on comes from here. Other modules
read os.environ only for process plumbing (the workers' metrics directory, the
children's environment, the reloader's expansion). Errors name the file, the field
path and why, so `llmux check` can print them as they are.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import regex
import yaml  # type: ignore[import-untyped]

from extproc.config import store_url
from extproc.config.cpus import usable_cpus
from extproc.config.schema import did_you_mean, problems

ProviderType = Literal["openai", "azure_openai", "anthropic", "gemini", "ollama"]


class ConfigError(Exception):
    """An invalid configuration, with every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class Listen(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    address: str = "127.0.0.1"
    port: int = 8080


class EnvoyAdmin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    port: int = 9901  # always bound to 127.0.0.1


class ExtProc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    address: str = "127.0.0.1"
    port: int = 50051  # gRPC port Envoy calls
    admin_port: int = 9090  # HTTP admin/metrics of the ext_proc, loopback only
    message_timeout_ms: int = 5000  # Envoy waits this long for each ext_proc answer
    workers: int = 0  # processes, on ports port..port+workers-1; 0: one per usable CPU
    transport: Literal["lean", "grpcio"] = "lean"  # grpcio: the reference gRPC server

    @property
    def ports(self) -> list[int]:
        count = self.workers or usable_cpus()
        return [self.port + i for i in range(count)]


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    connect_ms: int = 5000  # TCP/TLS connect to a provider
    request_s: float = 600.0  # whole request including a streamed response
    idle_s: float = 120.0  # no bytes in either direction on an open stream
    attempt_s: float = 60.0  # one attempt, until the provider's response headers


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_body_bytes: int = 10 * 1024 * 1024


class Credential(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    api_key: str = ""
    rpm: int | None = None
    tpm: int | None = None

    def __repr__(self) -> str:  # keys never reach logs through a repr
        return f"Credential(name={self.name!r}, rpm={self.rpm}, tpm={self.tpm})"


class Provider(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    type: ProviderType
    base_url: str
    api_key: str | None = None
    credentials: list[Credential] = []
    api_version: str | None = None  # azure_openai `api-version`
    anthropic_version: str = "2023-06-01"
    # The provider serves POST /v1/responses itself: Responses API requests pass through
    # untranslated (phases/passthrough.py). Only for type openai.
    responses_api: bool = False

    @property
    def all_credentials(self) -> list[Credential]:
        if self.credentials:
            return self.credentials
        return [Credential(name="default", api_key=self.api_key or "")]

    @property
    def url(self) -> UpstreamURL:
        return UpstreamURL.parse(self.base_url)

    def __repr__(self) -> str:
        return f"Provider(name={self.name!r}, type={self.type!r}, base_url={self.base_url!r})"


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: str
    model: str
    weight: int = 1
    priority: int = 0


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """US dollars per 1M tokens; cached input and cache writes cost `input` unless given."""

    input: float
    output: float = 0.0  # embeddings produce no output tokens
    cached_input: float | None = None  # input tokens read from the provider's prompt cache
    cache_write: float | None = None  # input tokens written to it (Anthropic)


Period = Literal["day", "month"]  # budgets' periods, in UTC


class MoneyBudget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """US dollars a virtual key or a tenant may spend per period (priced by `pricing`)."""

    amount: float
    period: Period = "month"

    def __post_init__(self) -> None:
        if not self.amount > 0:
            raise ValueError("budget_usd.amount must be more than 0")


class Tenant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    budget_usd: MoneyBudget | None = None  # shared by every key of the tenant


# How a model orders the eligible targets of its best priority tier (README, Routing).
Strategy = Literal["weighted", "round_robin", "least_busy", "least_latency", "lowest_cost"]


class Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    targets: list[Target]
    strategy: Strategy = "weighted"


class StoreTls(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """For rediss:// URLs of any topology; unset files: the system's CA store, no client cert."""

    ca_file: str | None = None
    cert_file: str | None = None  # a client certificate (mutual TLS) ...
    key_file: str | None = None  # ... and its key
    verify: bool = True  # false: accept any server certificate (test servers only)


class Store(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str | None = None  # None -> `llmux up` starts an embedded server (URL forms: README)
    on_error: Literal["open", "closed"] = "open"
    max_connections: int = 64  # per ext_proc process
    timeout_ms: int = 500  # per Redis call; a slow Redis never stalls a request longer
    tls: StoreTls = StoreTls()


class Breaker(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    failures: int = 3  # open after this many failures ...
    window_s: float = 30.0  # ... within this window
    open_s: float = 30.0  # then skip the target this long (half-open afterwards)


class Routing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_attempts: int | None = None  # per client request; default: one per target
    cooldown_s: float = 30.0  # after a 429 without Retry-After
    breaker: Breaker = Breaker()
    # A streamed answer is held until its first content; no content this long after
    # the response headers fails the attempt over (issue #19). None: timeouts.attempt_s.
    first_token_timeout_s: float | None = None


class Cache(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = False
    ttl_seconds: int = 3600
    max_entry_bytes: int = 1024 * 1024


class Auth(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    required: bool = False  # clients must present a virtual key
    admin_key: str | None = None  # protects the admin API; e.g. ${LLMUX_ADMIN_KEY}
    anonymous_rpm: int | None = None  # requests per minute per client IP when no key is used
    # Proxies in front of Envoy whose x-forwarded-for entries are trusted (0: the peer
    # Envoy saw is the client; a client-supplied header is never believed).
    trusted_hops: int = 0

    def __repr__(self) -> str:
        return f"Auth(required={self.required}, admin_key={'set' if self.admin_key else None})"


Detect = Literal[
    "regex", "secrets", "email", "phone", "payment_card", "ip_address", "prompt_injection"
]
GuardAction = Literal["block", "mask", "log"]
GuardPhase = Literal["request", "response"]
Severity = Literal["low", "medium", "high"]


class Guardrail(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A named rule: a detector and what to do on a match (README, Guardrails)."""

    name: str
    detect: Detect
    action: GuardAction
    on: tuple[GuardPhase, ...] = ("request", "response")
    pattern: str | None = None  # detect: regex
    max_length: int = 256  # longest text a regex match spans (the stream look-behind)
    severity: Severity = "low"  # prompt_injection: the least severe pattern applied
    models: list[str] = []  # empty: every model
    keys: list[str] = []  # virtual key ids or names; empty: every caller


class Telemetry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    otlp_endpoint: str | None = None  # OTLP/gRPC, e.g. http://jaeger:4317; else OTEL_* env
    otlp_headers: dict[str, str] = {}
    insecure: bool = True  # plain-text gRPC to the collector
    sample_ratio: float = 1.0
    service_name: str = "llmux"
    capture_content: bool = False  # prompts and completions in spans: only when asked

    def __repr__(self) -> str:  # header values may be collector credentials
        return f"Telemetry(otlp_endpoint={self.otlp_endpoint!r}, sample_ratio={self.sample_ratio})"


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    providers: list[Provider]
    models: list[Model]
    listen: Listen = Listen()
    admin: EnvoyAdmin = EnvoyAdmin()
    extproc: ExtProc = ExtProc()
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    store: Store = Store()
    routing: Routing = Routing()
    cache: Cache = Cache()
    auth: Auth = Auth()
    telemetry: Telemetry = Telemetry()
    # `provider/model` (provider: a configured name or a type) -> price; over the defaults
    pricing: dict[str, Price] = {}
    tenants: dict[str, Tenant] = {}  # tenant name (as virtual keys name it) -> its limits
    guardrails: list[Guardrail] = []  # checked in order on requests and responses

    @property
    def first_token_timeout_s(self) -> float:
        """How long a held stream may go without content (routing.first_token_timeout_s)."""
        return self.routing.first_token_timeout_s or self.timeouts.attempt_s

    def provider(self, name: str) -> Provider:
        return next(p for p in self.providers if p.name == name)

    def model(self, name: str) -> Model | None:
        return next((m for m in self.models if m.name == name), None)


class UpstreamURL(msgspec.Struct, frozen=True):
    """A provider base_url split into what Envoy needs."""

    tls: bool
    host: str
    port: int
    prefix: str  # path prefix without trailing slash, "" for none

    @classmethod
    def parse(cls, url: str) -> UpstreamURL:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port][/prefix], got {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return cls(tls=tls, host=parts.hostname, port=port, prefix=parts.path.rstrip("/"))


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(node: Any, env: Mapping[str, str], path: str, missing: list[str]) -> Any:
    """Replace ${VAR} / ${VAR:-default} in every string of a YAML tree; collect the missing."""
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name not in env and default is not None:
                return default
            if name not in env:
                missing.append(f"{path}: environment variable {name} is not set")
                return ""
            return env[name]

        return _VAR.sub(substitute, node)
    if isinstance(node, list):
        return [expand_env(v, env, f"{path}[{i}]", missing) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: expand_env(v, env, f"{path}.{k}", missing) for k, v in node.items()}
    return node


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror}"]) from None
    return parse(text, source=source, env=os.environ if env is None else env)


def parse(text: str, *, source: str = "<config>", env: Mapping[str, str]) -> Config:
    config = _parse(text, source, env)
    # `llmux up` hands the embedded server's URL to its ext_proc this way.
    if config.store.url is None and env.get("LLMUX_STORE_URL"):
        config = msgspec.structs.replace(
            config, store=msgspec.structs.replace(config.store, url=env["LLMUX_STORE_URL"])
        )
    return msgspec.structs.replace(config, telemetry=telemetry_from_env(config.telemetry, env))


def telemetry_from_env(settings: Telemetry, env: Mapping[str, str]) -> Telemetry:
    """The standard OTEL_* variables fill what the config leaves unset."""
    changes: dict[str, Any] = {}
    if settings.otlp_endpoint is None and env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        changes["otlp_endpoint"] = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    if not settings.otlp_headers and env.get("OTEL_EXPORTER_OTLP_HEADERS"):
        pairs = (item.partition("=") for item in env["OTEL_EXPORTER_OTLP_HEADERS"].split(","))
        changes["otlp_headers"] = {k.strip(): v.strip() for k, _, v in pairs if k.strip()}
    if env.get("OTEL_SERVICE_NAME") and settings.service_name == "llmux":
        changes["service_name"] = env["OTEL_SERVICE_NAME"]
    if env.get("OTEL_TRACES_SAMPLER_ARG") and settings.sample_ratio == 1.0:
        try:
            changes["sample_ratio"] = float(env["OTEL_TRACES_SAMPLER_ARG"])
        except ValueError:
            pass
    return msgspec.structs.replace(settings, **changes) if changes else settings


def _parse(text: str, source: str, env: Mapping[str, str]) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"invalid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the top level must be a mapping"])
    missing: list[str] = []
    raw = expand_env(_guardrail_on_keys(raw), env, "$", missing)
    found = missing + problems(raw, Config) + _store_problems(raw)
    if found:
        raise ConfigError(source, found)
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:  # a rule the walk does not know: still said
        raise ConfigError(source, [str(exc)]) from None
    found = check_references(config)
    if found:
        raise ConfigError(source, found)
    return config


def _guardrail_on_keys(raw: dict[Any, Any]) -> dict[Any, Any]:
    """YAML 1.1 reads an unquoted `on:` key as the boolean true: a guardrail's `on` it is."""
    rules = raw.get("guardrails")
    if isinstance(rules, list):
        raw["guardrails"] = [
            {("on" if key is True else key): v for key, v in rule.items()}
            if isinstance(rule, dict)
            else rule
            for rule in rules
        ]
    return raw


def check_references(config: Config) -> list[str]:
    """Cross-field rules msgspec cannot express."""
    problems: list[str] = []
    names = [p.name for p in config.providers]
    for i, provider in enumerate(config.providers):
        at = f"$.providers[{i}]"
        if names.count(provider.name) > 1:
            problems.append(f"{at}.name: duplicate provider name {provider.name!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", provider.name):
            problems.append(f"{at}.name: use letters, digits, '_', '.', '-' only")
        try:
            UpstreamURL.parse(provider.base_url)
        except ValueError as exc:
            problems.append(f"{at}.base_url: {exc}")
        if provider.api_key is not None and provider.credentials:
            problems.append(f"{at}: give either api_key or credentials, not both")
        if provider.type != "ollama" and not any(c.api_key for c in provider.all_credentials):
            problems.append(f"{at}: a {provider.type} provider needs api_key or credentials")
        if provider.type == "azure_openai" and not provider.api_version:
            problems.append(f"{at}.api_version: required for azure_openai")
        if provider.responses_api and provider.type != "openai":
            problems.append(
                f"{at}.responses_api: only an openai provider serves /v1/responses itself"
            )
    problems.extend(pricing_problems(config))
    problems.extend(guardrail_problems(config))
    if config.timeouts.idle_s <= config.timeouts.attempt_s:
        problems.append(
            "$.timeouts.idle_s: must be longer than timeouts.attempt_s, or a slow attempt "
            "ends the whole request instead of falling back to the next target"
        )
    first_token = config.routing.first_token_timeout_s
    if first_token is not None and first_token <= 0:
        problems.append("$.routing.first_token_timeout_s: must be more than 0 seconds")
    model_names = [m.name for m in config.models]
    for i, model in enumerate(config.models):
        at = f"$.models[{i}]"
        if model_names.count(model.name) > 1:
            problems.append(f"{at}.name: duplicate model name {model.name!r}")
        if not model.targets:
            problems.append(f"{at}.targets: at least one target is needed")
        for j, target in enumerate(model.targets):
            if target.provider not in names:
                problems.append(
                    f"{at}.targets[{j}].provider: unknown provider {target.provider!r}"
                    f"{did_you_mean(target.provider, names)} (known: {', '.join(names) or 'none'})"
                )
            if target.weight < 1:
                problems.append(f"{at}.targets[{j}].weight: must be >= 1")
            if target.priority < 0:
                problems.append(f"{at}.targets[{j}].priority: must be >= 0")
    return problems


PROVIDER_TYPES: tuple[str, ...] = typing.get_args(ProviderType)
NANO_USD_PER_TOKEN = 1000  # $1 per 1M tokens is 1,000 nano-dollars a token


def price_units(usd_per_million: float) -> int | None:
    """A price in nano-dollars per token, the unit costs are counted in; None when finer.

    Whole nano-dollars keep every sum exact (integers in Redis and in Lua's doubles up to
    $9M): $0.001 per 1M tokens is the finest price the gateway counts.
    """
    units = usd_per_million * NANO_USD_PER_TOKEN
    whole = round(units)
    return whole if abs(units - whole) < 1e-6 and whole >= 0 else None


def pricing_problems(config: Config) -> list[str]:
    """`pricing` keys name a provider (configured name or type) and a model; sane prices."""
    found: list[str] = []
    names = [p.name for p in config.providers]
    for key, price in config.pricing.items():
        at = f"$.pricing[{key!r}]"
        provider, slash, model = key.partition("/")
        if not slash or not provider or not model:
            found.append(f"{at}: the key must be `provider/model`, e.g. `openai/gpt-4o-mini`")
        elif provider not in names and provider not in PROVIDER_TYPES:
            known = [*names, *(t for t in PROVIDER_TYPES if t not in names)]
            found.append(
                f"{at}: unknown provider {provider!r}{did_you_mean(provider, known)} "
                f"(a configured provider name or a type: {', '.join(known)})"
            )
        for field in ("input", "output", "cached_input", "cache_write"):
            value = getattr(price, field)
            if value is not None and price_units(value) is None:
                found.append(
                    f"{at}.{field}: must be >= 0 with at most 3 decimals "
                    "(US dollars per 1M tokens, counted in nano-dollars per token)"
                )
    return found


def guardrail_problems(config: Config) -> list[str]:
    """Unique rule names, a compilable `pattern` exactly for regex rules, known models."""
    found: list[str] = []
    names = [g.name for g in config.guardrails]
    models = [m.name for m in config.models]
    for i, rule in enumerate(config.guardrails):
        at = f"$.guardrails[{i}]"
        if names.count(rule.name) > 1:
            found.append(f"{at}.name: duplicate guardrail name {rule.name!r}")
        if (rule.detect == "regex") != (rule.pattern is not None):
            found.append(f"{at}.pattern: required with detect: regex, and only with it")
        elif rule.pattern is not None:
            try:
                regex.compile(rule.pattern)  # the engine the guardrails run it on
            except regex.error as exc:
                found.append(f"{at}.pattern: not a valid regular expression ({exc})")
        if not 1 <= rule.max_length <= 65536:
            found.append(f"{at}.max_length: must be from 1 to 65536")
        if not rule.on:
            found.append(f"{at}.on: name request, response or both")
        found.extend(
            f"{at}.models: unknown model {m!r}{did_you_mean(m, models)}"
            for m in rule.models
            if m not in models
        )
    if config.auth.anonymous_rpm is not None and config.auth.anonymous_rpm < 1:
        found.append("$.auth.anonymous_rpm: must be >= 1")
    if config.auth.trusted_hops < 0:
        found.append("$.auth.trusted_hops: must be >= 0")
    return found


def _store_problems(raw: dict[str, Any]) -> list[str]:
    """store.url's problems, found beside the schema's (not only once the schema is valid)."""
    store = raw.get("store")
    url = store.get("url") if isinstance(store, dict) else None
    return [f"$.store.url: {p}" for p in store_url_problems(url)] if isinstance(url, str) else []


def store_url_problems(url: str) -> list[str]:
    """Why `url` is none of the store's URL forms; never echoes the URL (it may hold a
    password)."""
    try:
        store_url.parse(url)
    except store_url.StoreUrlError as exc:
        return [str(exc)]
    return []
