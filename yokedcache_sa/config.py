"""Configuration: :class:`CacheConfig`, read from arguments or ``YOKEDCACHE_*`` variables."""

from __future__ import annotations

import difflib
import logging
import os
import threading
import warnings
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError, redact_url

__all__ = ["CacheConfig"]

LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]
log = logging.getLogger("yokedcache_sa")
ENV_PREFIX = "YOKEDCACHE_"
_NO_EXPIRY = frozenset({"none", "null", "no", "never", "off", "inf"})
_warned_env: set[str] = set()
_warned_lock = threading.Lock()


class CacheConfig(BaseSettings):
    """Settings of one :class:`~yokedcache_sa.YokedCache`.

    Every field can also be set from the environment with the ``YOKEDCACHE_`` prefix
    (``YOKEDCACHE_REDIS_URL``, ``YOKEDCACHE_DEFAULT_TTL`` …). ``redis_url=None`` (the default)
    selects the in-process memory backend; nothing connects anywhere unless a URL is given.

    Raises:
        ConfigError: a value is invalid; the message names the field.

    Example::

        CacheConfig(redis_url="rediss://:secret@cache.internal:6380/0", default_ttl=300)
    """

    model_config = SettingsConfigDict(
        env_prefix="YOKEDCACHE_", extra="forbid", validate_default=True, frozen=True
    )

    redis_url: SecretStr | None = None
    """``redis://`` or ``rediss://`` (TLS) URL; None means the in-process memory backend."""
    default_ttl: float | None = Field(default=300.0)
    """Seconds an entry lives when no TTL is given; None means no expiry."""
    key_prefix: str = Field(default="yokedcache", min_length=1, max_length=64)
    """Prefix of every key this cache writes; caches with different prefixes never meet."""
    max_connections: int = Field(default=50, ge=1, le=10_000)
    enable_circuit_breaker: bool = True
    circuit_breaker_threshold: int = Field(default=5, ge=1)
    """Consecutive failures that open the breaker."""
    circuit_breaker_timeout: float = Field(default=5.0, gt=0)
    """Seconds the breaker stays open before one probe is let through."""
    log_level: LogLevel = "WARNING"
    """Deprecated: configure the ``yokedcache_sa`` logger with :mod:`logging` instead. Only
    a level other than WARNING set explicitly (argument or ``YOKEDCACHE_LOG_LEVEL``) is
    applied to that logger, with a DeprecationWarning; otherwise the logger is left alone."""
    socket_timeout: float = Field(default=0.25, gt=0, le=60)
    socket_connect_timeout: float = Field(default=0.5, gt=0, le=60)
    max_value_bytes: int = Field(default=1_048_576, ge=64, le=512 * 1024 * 1024)
    """Largest encoded entry stored; larger values are not cached (and count an error)."""
    signing_secret: SecretStr | None = None
    """When set, entries are HMAC-signed and unsigned or forged entries are ignored."""
    memory_max_entries: int = Field(default=10_000, ge=1)
    memory_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    memory_shared: bool = True
    """Memory backend: share the version record (not the entries) with every process of this
    host using the same ``key_prefix``, through a file in ``/dev/shm`` (else the temp dir), so
    a commit in one worker process invalidates the others' entries. False: process-local.
    Added in 0.x."""
    write_lease: float = Field(default=60.0, gt=0, le=3600)
    """Seconds a writer's "being written" mark survives if the writer dies before releasing it."""
    strict_invalidation: bool = False
    """Strict mode: a commit also bumps its tables' versions *before* COMMIT, and a COMMIT is
    refused (InvalidationError, rolled back) when that cannot be delivered — so no process can
    serve pre-commit data even if the post-commit invalidation is lost. Costs no extra round
    trip; makes writes fail while the cache is unreachable."""

    shadow_read_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of ORM cache hits also re-run against the database in a background thread
    and compared with what was served (mismatches are logged and counted; see
    docs/observability.md). 0 (the default) turns shadow reads off. Added in 0.x."""

    def __init__(self, **data: Any) -> None:
        _warn_unknown_env(self.__class__)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    @field_validator("redis_url", mode="before")
    @classmethod
    def _check_url(cls, value: object) -> object:
        if value is None or value == "":
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(raw, str):
            raise ValueError("must be a string such as redis://localhost:6379/0")
        parts = urlsplit(raw)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"scheme {parts.scheme!r} is not supported in {redact_url(raw)!r}; "
                "use redis://host:6379/0, rediss:// for TLS, or leave unset for memory"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError(f"no host in {redact_url(raw)!r}; use redis://host:6379/0")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ValueError(f"bad port in {redact_url(raw)!r}") from None
        return raw

    @field_validator("default_ttl", mode="before")
    @classmethod
    def _ttl_words(cls, value: object) -> object:
        # the environment has no None: "none"/"null" (any case) there mean "no expiry", and
        # an empty value means "not set" (the default)
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _NO_EXPIRY:
                return None
            if not word:
                return cls.model_fields["default_ttl"].default
        return value

    @field_validator("default_ttl")
    @classmethod
    def _check_ttl(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be > 0 seconds, or None for no expiry")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        bad = set(value) & set("{}\n\r\x00 :")
        if bad:
            raise ValueError(f"must not contain {sorted(bad)!r}; use letters, digits, - or _")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _apply_log_level(self) -> CacheConfig:
        # only a non-default level given explicitly is applied: a config rebuilt from
        # model_dump() (which carries the default) must not reset the application's logger
        if "log_level" in self.model_fields_set and self.log_level != "WARNING":
            warnings.warn(
                "CacheConfig.log_level (YOKEDCACHE_LOG_LEVEL) is deprecated: configure "
                f"logging instead, e.g. logging.getLogger('yokedcache_sa').setLevel("
                f"logging.{self.log_level}); applied this time",
                DeprecationWarning,
                stacklevel=4,
            )
            log.setLevel(self.log_level)
        return self

    @property
    def redis_url_redacted(self) -> str | None:
        """The Redis URL with its password replaced by ``***``."""
        return redact_url(self.redis_url.get_secret_value() if self.redis_url else None)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "redis_url":
                yield name, self.redis_url_redacted
            else:
                yield name, value


def _warn_unknown_env(cls: type[BaseSettings]) -> None:
    """Log once per name a ``YOKEDCACHE_*`` variable that names no setting (a typo)."""
    names = {f"{ENV_PREFIX}{n.upper()}" for n in cls.model_fields}
    for var in os.environ:
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX) or upper in names or upper in _warned_env:
            continue
        with _warned_lock:
            if upper in _warned_env:
                continue
            _warned_env.add(upper)
        close = difflib.get_close_matches(upper, sorted(names), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        log.warning(
            "yokedcache: the environment variable %s is not a CacheConfig setting and is "
            "ignored%s (settings: see docs/operations.md)",
            var,
            hint,
        )


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"CacheConfig.{field} (env YOKEDCACHE_{field.upper()}): {msg}")
    return "invalid cache configuration:\n  " + "\n  ".join(lines)
