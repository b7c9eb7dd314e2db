"""Configuration: read once at start-up from a TOML file and ``ASYNCGATE_*`` variables.

Precedence, lowest first: built-in defaults, the TOML file (``--config`` or ``ASYNCGATE_CONFIG``),
then environment variables. A variable is named after its section and key, e.g.
``ASYNCGATE_WORKER_CONCURRENCY=500`` sets ``[worker] concurrency``; providers use
``ASYNCGATE_PROVIDERS_<NAME>_<KEY>``, e.g. ``ASYNCGATE_PROVIDERS_OPENAI_BASE_URL``.
``DATABASE_URL`` is honoured when ``ASYNCGATE_DATABASE_URL`` is not set; ``ASYNCGATE_TEST_*``
variables belong to the test suite and are ignored here.

Anything unknown or malformed in the file stops the process with a :class:`ConfigError` naming
the setting; an ``ASYNCGATE_*`` variable that names no setting is ignored with a warning (see
:func:`unknown_environment`), since environments carry variables meant for other versions.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncgate import local

ENV_PREFIX = "ASYNCGATE_"
MAX_WAIT_LIMIT = 3600
"""Upper bound of ``jobs.max_wait_seconds``: a request held longer is a connection problem."""
MAX_GROUP_COMMIT_BYTES = 256 * 1024 * 1024
"""Upper bound of ``database.group_commit_max_bytes``, well under PostgreSQL's 1 GB per value."""
PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class ConfigError(Exception):
    """A setting is unknown, missing or has a value of the wrong type."""


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs; call :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    processes: int = 1
    """API processes started by ``asyncgate api`` (they share the listening port)."""
    serve_processes: int = 0
    """API processes started by ``asyncgate serve``; 0: one per CPU core."""
    serve_worker_process: bool = True
    """``asyncgate serve`` runs its worker and sweeper in a process of their own; false: in
    each API process (with ``serve_processes = 1``, API, worker and sweeper share one)."""
    serve_worker_nice: int = 5
    """Niceness of ``serve``'s worker process (0-19): when the API processes and the worker
    want more CPU than the machine has, accepting requests comes first and the worker works
    off the queue with what is left; on idle cores it makes no difference."""
    header_timeout_seconds: float = 5.0
    """A request's line and headers must arrive within this long of its first byte."""
    idle_timeout_seconds: float = 5.0
    """A connection with no request under way (none yet, or between two) is closed after this."""
    max_header_bytes: int = 32 * 1024
    """Most bytes of a request's line and headers together; ``431`` above."""
    max_headers: int = 100
    """Most header fields in one request; ``431`` above."""
    max_connections: int = 2048
    """Open connections per API process; a connection past them is answered ``503``."""
    public_url: str | None = None
    """Where clients reach the gateway (``https://gateway.example.com``): webhook events give
    their ``result_url`` under it; unset, ``result_url`` is a path."""


@dataclass(frozen=True)
class DatabaseConfig:
    url: Secret | None = None
    """External PostgreSQL URL; when unset an embedded PostgreSQL runs in ``data_dir``."""
    listen_url: Secret | None = None
    """A direct PostgreSQL URL (not through a pooler) for what needs a session: the LISTEN
    connections and the migrations. Unset: ``url`` serves them too. Needs ``url``."""
    data_dir: str = ".asyncgate/pgdata"
    pool_size: int = 10
    connect_timeout: float = 5.0
    startup_timeout_seconds: float = 60.0
    """How long a starting process waits for PostgreSQL before it exits with an error."""
    group_commit_max_bytes: int = 4 * 1024 * 1024
    """Request JSON bytes one group-commit statement carries at most; a batch always takes at
    least one job, however large."""


@dataclass(frozen=True)
class JobsConfig:
    default_ttl: int = 3600
    """Seconds a result is kept after completion when the request names no valid TTL."""
    max_ttl: int = 30 * 86400
    """Requested TTLs above this are clamped to it."""
    retry_after: int = 1
    """``Retry-After`` seconds suggested to clients polling an unfinished job."""
    max_timeout_seconds: int = 86400
    """``x-bf-async-timeout`` values above this many seconds are clamped to it."""
    idempotency_window_seconds: int = 86400
    """How long an Idempotency-Key names its first job; afterwards the key may be used again."""
    max_wait_seconds: int = 60
    """Longest ``Prefer: wait=N`` honoured on a poll or submit; larger waits are cut to it
    (0 turns long-polling off)."""
    sync_wait_seconds: int = 600
    """How long a synchronous call on an OpenAI-style route waits for its job before answering
    504 with the job's id in ``x-bf-async-id``."""


@dataclass(frozen=True)
class AuthConfig:
    required: bool = False
    """When on, a request carrying no virtual key at all is answered 401."""
    key_cache_seconds: float = 2.0
    """How long an API process trusts a key lookup (a disabled key stops working after this)."""


@dataclass(frozen=True)
class LimitsConfig:
    max_json_bytes: int = 4 * 1024 * 1024
    max_upload_bytes: int = 25 * 1024 * 1024
    max_files: int = 16


@dataclass(frozen=True)
class WorkerConfig:
    concurrency: int = 1000
    """Jobs one worker process runs at once."""
    claim_batch: int = 100
    """Most jobs taken by one claim statement."""
    lease_seconds: float = 30.0
    renew_seconds: float = 5.0
    """How often live leases are extended; keep it well under ``lease_seconds``."""
    poll_seconds: float = 1.0
    """Fallback claim interval when no notification arrives."""
    max_attempts: int = 3
    """Executions of one job (claims that ran) before it fails for good."""
    retry_tries: int = 3
    """Upstream tries per model within one execution for transient failures."""
    retry_base_seconds: float = 0.25
    retry_max_seconds: float = 10.0
    max_pending_seconds: float = 86400.0
    """A job still pending after this long fails instead of running."""
    max_job_seconds: float = 600.0
    """Wall-clock budget of one execution, retries and fallbacks included."""
    shutdown_grace_seconds: float = 20.0
    """On SIGTERM, in-flight jobs get this long to finish before they are handed back."""
    max_response_bytes: int = 64 * 1024 * 1024
    """Upstream answers larger than this fail the job."""


@dataclass(frozen=True)
class SweeperConfig:
    interval_seconds: float = 60.0
    batch: int = 250
    pause_seconds: float = 0.05
    """Wait between two batches of one sweep, so a long sweep leaves room to other writers."""


@dataclass(frozen=True)
class ProviderConfig:
    """One upstream: an OpenAI-compatible HTTP API (``type = "openai"``), or models run by
    the worker itself (``type = "local"``, see :mod:`asyncgate.local`), which take no URL or key.

    ``api_key`` is read from the environment variable named by ``api_key_env``.
    """

    name: str
    base_url: str = ""
    api_key_env: str | None = None
    api_key: Secret | None = None
    timeout: float = 60.0
    max_concurrency: int = 64
    type: str = "openai"
    processes: int = 1
    """Local only: inference processes per worker process, the local provider's own cap."""

    @property
    def local(self) -> bool:
        return self.type == "local"


@dataclass(frozen=True)
class LoggingConfig:
    format: str = "text"
    """``text`` (one plain line per event) or ``json`` (one JSON object per line)."""


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 0
    """Where ``asyncgate worker`` serves its metrics (the API serves them at ``/metrics``);
    0: it serves none."""


@dataclass(frozen=True)
class WebhooksConfig:
    secret_key: Secret | None = None
    """Key that seals endpoints' signing secrets in the database; webhooks need it (any long
    random string; every process that creates endpoints or delivers must have the same)."""
    timeout_seconds: float = 10.0
    """One attempt's budget, from connecting to the end of the answer."""
    retry_initial_seconds: float = 30.0
    """Delay before the first retry; each later retry waits twice as long, with jitter."""
    retry_max_seconds: float = 1800.0
    """Longest delay between two attempts."""
    retry_for_seconds: float = 86400.0
    """How long after its first attempt a delivery is retried before it is exhausted."""
    max_payload_bytes: int = 256 * 1024
    """Results larger than this are left out of the body (``response_omitted``)."""
    concurrency: int = 64
    """Attempts one worker process makes at once."""
    concurrency_per_endpoint: int = 8
    """Attempts in flight to one endpoint, across every worker process."""
    disable_after_exhausted: int = 20
    """An endpoint whose deliveries are exhausted this many times in a row is disabled."""
    rotation_grace_seconds: float = 86400.0
    """After ``rotate-secret``, how long the previous secret keeps signing beside the new."""
    retention_days: float = 30.0
    """Finished deliveries and their attempt log are deleted after this many days."""
    allow_private_networks: bool = False
    """Deliver to loopback, private, link-local and cloud metadata addresses (refused by
    default)."""
    allow_http: bool = False
    """Accept plain ``http://`` endpoint URLs (only ``https://`` by default)."""
    poll_seconds: float = 1.0
    """How often delivery workers look for due retries when no notification arrives."""


@dataclass(frozen=True)
class Settings:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    sweeper: SweeperConfig = field(default_factory=SweeperConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    log_level: str = "INFO"

    def replace(self, **sections: Any) -> Settings:
        """A copy with whole sections or single keys (``worker={"concurrency": 5}``) replaced."""
        changes: dict[str, Any] = {}
        for name, value in sections.items():
            current = getattr(self, name)
            if isinstance(value, dict) and dataclasses.is_dataclass(current):
                value = dataclasses.replace(current, **value)  # type: ignore[type-var]
            changes[name] = value
        return dataclasses.replace(self, **changes)


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "database": DatabaseConfig,
    "jobs": JobsConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "worker": WorkerConfig,
    "sweeper": SweeperConfig,
    "logging": LoggingConfig,
    "metrics": MetricsConfig,
    "webhooks": WebhooksConfig,
}
_PROVIDER_KEYS = ("base_url", "api_key_env", "timeout", "max_concurrency", "type", "processes")
_OPENAI_ONLY_KEYS = ("base_url", "api_key_env")
_LOCAL_ONLY_KEYS = ("processes",)
PROVIDER_TYPES = ("openai", "local")
DEFAULT_LOCAL = "local"
"""The provider configured when none is and the ``local`` extra is installed."""


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file (if any) and the environment into :class:`Settings`.

    Raises ConfigError naming the first bad setting.
    """
    env = os.environ if environ is None else environ
    path = path or env.get(ENV_PREFIX + "CONFIG")
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    _overlay_environment(raw, env)
    return _build(raw, env)


def _environment_setting(name: str) -> tuple[str, str] | None:
    """``(section, key)`` (``section`` may be ``providers.<name>`` or ``""`` for a top-level key)
    of an ``ASYNCGATE_*`` variable that names a setting; None for one that names none."""
    rest = name[len(ENV_PREFIX) :].lower()
    if rest == "log_level":
        return "", "log_level"
    if rest.startswith("providers_"):
        provider_rest = rest[len("providers_") :]
        key = next((k for k in _PROVIDER_KEYS if provider_rest.endswith("_" + k)), None)
        if key is None or len(provider_rest) == len(key) + 1:
            return None
        return f"providers.{provider_rest[: -len(key) - 1]}", key
    section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
    if section is None:
        return None
    key = rest[len(section) + 1 :]
    if key not in {f.name for f in dataclasses.fields(_SECTIONS[section])}:
        return None
    return section, key


def _settings_variables(env: Mapping[str, str]) -> list[str]:
    """The ``ASYNCGATE_*`` variables meant as settings (not the config path, not the tests')."""
    return [
        name
        for name in env
        if name.startswith(ENV_PREFIX)
        and name != ENV_PREFIX + "CONFIG"
        and not name.startswith(ENV_PREFIX + "TEST_")  # reserved for the test suite
    ]


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``ASYNCGATE_*`` variable that names no setting (it is ignored), with the
    real setting it most resembles when there is one."""
    env = os.environ if environ is None else environ
    known = [
        f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
        for section, cls in _SECTIONS.items()
        for f in dataclasses.fields(cls)
    ] + [ENV_PREFIX + "LOG_LEVEL", ENV_PREFIX + "CONFIG"]
    warnings = []
    for name in sorted(_settings_variables(env)):
        if _environment_setting(name) is not None:
            continue
        if name.upper().startswith(ENV_PREFIX + "PROVIDERS_"):
            hint = "; providers take ASYNCGATE_PROVIDERS_<NAME>_<KEY>, KEY one of " + ", ".join(
                k.upper() for k in _PROVIDER_KEYS
            )
        else:
            close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"environment variable {name} names no setting and is ignored{hint}")
    return warnings


def _overlay_environment(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    if "DATABASE_URL" in env and ENV_PREFIX + "DATABASE_URL" not in env:
        raw.setdefault("database", {})["url"] = env["DATABASE_URL"]
    for name in _settings_variables(env):
        setting = _environment_setting(name)
        if setting is None:
            continue  # reported by unknown_environment()
        section, key = setting
        if not section:
            raw[key] = env[name]
        elif section.startswith("providers."):
            provider = section.removeprefix("providers.")
            raw.setdefault("providers", {}).setdefault(provider, {})[key] = env[name]
        else:
            raw.setdefault(section, {})[key] = env[name]


def _build(raw: dict[str, Any], env: Mapping[str, str]) -> Settings:
    unknown = set(raw) - set(_SECTIONS) - {"providers", "log_level"}
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    sections = {
        name: _build_section(cls, raw.get(name, {}), name) for name, cls in _SECTIONS.items()
    }
    providers = {
        name: _build_provider(name, values, env)
        for name, values in (raw.get("providers") or {}).items()
    }
    if not providers and local.available():
        providers = {DEFAULT_LOCAL: ProviderConfig(name=DEFAULT_LOCAL, type="local")}
    settings = Settings(
        **sections, providers=providers, log_level=str(raw.get("log_level", "INFO"))
    )
    _check(settings)
    return settings


def _build_section(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{where}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"[{where}] unknown key(s): {', '.join(sorted(unknown))}")
    return cls(
        **{key: _coerce(value, hints[key], f"{where}.{key}") for key, value in values.items()}
    )


def _build_provider(name: str, values: Any, env: Mapping[str, str]) -> ProviderConfig:
    if not PROVIDER_NAME.match(name):
        raise ConfigError(f"provider name {name!r} must match {PROVIDER_NAME.pattern}")
    if not isinstance(values, dict):
        raise ConfigError(f"[providers.{name}] must be a table")
    unknown = set(values) - set(_PROVIDER_KEYS)
    if unknown:
        raise ConfigError(f"provider {name!r}: unknown key(s): {', '.join(sorted(unknown))}")
    kind = values.get("type", "openai")
    if kind not in PROVIDER_TYPES:
        raise ConfigError(f"providers.{name}.type must be one of {', '.join(PROVIDER_TYPES)}")
    misplaced = set(values) & set(_OPENAI_ONLY_KEYS if kind == "local" else _LOCAL_ONLY_KEYS)
    if misplaced:
        raise ConfigError(
            f"provider {name!r} of type {kind} takes no {', '.join(sorted(misplaced))}"
        )
    if kind == "openai" and "base_url" not in values:
        raise ConfigError(f"provider {name!r} needs a base_url")
    config = _build_section(ProviderConfig, {"name": name, **values}, f"providers.{name}")
    if config.api_key_env:
        secret = env.get(config.api_key_env)
        if not secret:
            raise ConfigError(
                f"provider {name!r}: environment variable {config.api_key_env} is not set"
            )
        config = dataclasses.replace(config, api_key=Secret(secret))
    return dataclasses.replace(config, base_url=config.base_url.rstrip("/"))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        hint = options[0]
    try:
        if hint is Secret:
            return Secret(str(value))
        if hint is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is str:
            return str(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a valid {hint.__name__}") from exc
    raise ConfigError(f"{where}: unsupported type {hint}")


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")

_POSITIVE_SERVER_KEYS = (
    "processes",
    "header_timeout_seconds",
    "idle_timeout_seconds",
    "max_header_bytes",
    "max_headers",
    "max_connections",
)


def _check(settings: Settings) -> None:
    problems = []
    for name in _POSITIVE_SERVER_KEYS:
        if getattr(settings.server, name) <= 0:
            problems.append(f"server.{name} must be positive")
    if settings.server.serve_processes < 0:
        problems.append("server.serve_processes must be 0 (one per core) or more")
    if not 0 <= settings.server.serve_worker_nice <= 19:
        problems.append("server.serve_worker_nice must be from 0 to 19")
    w = settings.worker
    if w.renew_seconds * 2 > w.lease_seconds:
        problems.append("worker.renew_seconds must be at most half of worker.lease_seconds")
    for name in ("concurrency", "claim_batch", "max_attempts", "retry_tries"):
        if getattr(w, name) < 1:
            problems.append(f"worker.{name} must be at least 1")
    d = settings.database
    if d.pool_size < 1:
        problems.append("database.pool_size must be at least 1")
    if d.connect_timeout <= 0:
        problems.append("database.connect_timeout must be positive")
    if not 0 <= d.startup_timeout_seconds <= 86400:
        problems.append("database.startup_timeout_seconds must be between 0 and 86400")
    if not 1 <= d.group_commit_max_bytes <= MAX_GROUP_COMMIT_BYTES:
        problems.append(
            f"database.group_commit_max_bytes must be between 1 and {MAX_GROUP_COMMIT_BYTES}"
        )
    if d.listen_url is not None:
        if d.url is None:
            problems.append(
                "database.listen_url needs database.url (the embedded PostgreSQL is reached "
                "directly)"
            )
        if not d.listen_url.reveal().startswith(_POSTGRES_SCHEMES):
            problems.append("database.listen_url must be a postgresql:// URL")
    limits = settings.limits
    for name in ("max_json_bytes", "max_upload_bytes"):
        if getattr(limits, name) < 1:
            problems.append(f"limits.{name} must be at least 1")
    if limits.max_files < 0:
        problems.append("limits.max_files must not be negative")
    public_url = settings.server.public_url
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        problems.append("server.public_url must be an http(s) URL")
    if not 1 <= settings.server.port <= 65535:
        problems.append("server.port must be between 1 and 65535")
    if settings.sweeper.interval_seconds <= 0 or settings.sweeper.batch < 1:
        problems.append("sweeper.interval_seconds must be positive and sweeper.batch at least 1")
    if not 0 <= settings.sweeper.pause_seconds <= 60:
        problems.append("sweeper.pause_seconds must be between 0 and 60")
    if settings.jobs.max_timeout_seconds < 1:
        problems.append("jobs.max_timeout_seconds must be at least 1")
    if settings.jobs.retry_after < 0:
        problems.append("jobs.retry_after must not be negative")
    if settings.jobs.default_ttl < 1 or settings.jobs.max_ttl < 1:
        problems.append("jobs.default_ttl and jobs.max_ttl must be positive")
    if not 1 <= settings.jobs.idempotency_window_seconds <= 365 * 86400:
        problems.append("jobs.idempotency_window_seconds must be between 1 and 31536000")
    if settings.jobs.default_ttl > settings.jobs.max_ttl:
        problems.append("jobs.default_ttl must not exceed jobs.max_ttl")
    if not 0 <= settings.jobs.max_wait_seconds <= MAX_WAIT_LIMIT:
        problems.append(f"jobs.max_wait_seconds must be between 0 and {MAX_WAIT_LIMIT}")
    if not 1 <= settings.jobs.sync_wait_seconds <= MAX_WAIT_LIMIT:
        problems.append(f"jobs.sync_wait_seconds must be between 1 and {MAX_WAIT_LIMIT}")
    for name, provider in settings.providers.items():
        if provider.local:
            if provider.processes < 1:
                problems.append(f"providers.{name}.processes must be at least 1")
        elif not provider.base_url.startswith(("http://", "https://")):
            problems.append(f"providers.{name}.base_url must be an http(s) URL")
        if provider.max_concurrency < 1 or provider.timeout <= 0:
            problems.append(f"providers.{name}: timeout and max_concurrency must be positive")
    if not 0 <= settings.metrics.port <= 65535:
        problems.append("metrics.port must be between 0 (off) and 65535")
    if settings.logging.format not in ("text", "json"):
        problems.append("logging.format must be text or json")
    problems.extend(_webhook_problems(settings.webhooks))
    if problems:
        raise ConfigError("; ".join(problems))


def _webhook_problems(h: WebhooksConfig) -> list[str]:
    problems = [
        f"webhooks.{name} must be positive"
        for name in (
            "timeout_seconds",
            "retry_initial_seconds",
            "retry_max_seconds",
            "retry_for_seconds",
            "retention_days",
            "poll_seconds",
        )
        if getattr(h, name) <= 0
    ]
    problems.extend(
        f"webhooks.{name} must be at least 1"
        for name in (
            "max_payload_bytes",
            "concurrency",
            "concurrency_per_endpoint",
            "disable_after_exhausted",
        )
        if getattr(h, name) < 1
    )
    if h.rotation_grace_seconds < 0:
        problems.append("webhooks.rotation_grace_seconds must not be negative")
    if h.retry_initial_seconds > h.retry_max_seconds:
        problems.append("webhooks.retry_initial_seconds must not exceed webhooks.retry_max_seconds")
    if h.secret_key is not None and len(h.secret_key.reveal()) < 16:
        problems.append("webhooks.secret_key must be at least 16 characters")
    return problems
