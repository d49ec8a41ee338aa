"""Where the notification connections go: libpq parameters from any PostgreSQL URL.

The listener and the installer talk to PostgreSQL through a psycopg connection of their own,
whatever driver the application's engine uses (``postgresql+asyncpg://``, ``+psycopg``,
``+psycopg2`` or plain ``postgresql://``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, MissingDependency, YokedCacheError, redact_text, redact_url

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DEFAULT_CHANNEL",
    "PgNotifyError",
    "Target",
    "connect",
    "quote_ident",
    "split_qualified",
    "target_of",
]

DEFAULT_CHANNEL = "yokedcache"
"""The channel triggers notify and listeners listen on unless told otherwise."""

# libpq keywords a URL's query may carry through to the listener's connection; others
# (driver options such as asyncpg's prepared_statement_cache_size) mean nothing to libpq
_LIBPQ = frozenset(
    """
    host hostaddr port dbname user password passfile channel_binding connect_timeout
    client_encoding options application_name fallback_application_name keepalives
    keepalives_idle keepalives_interval keepalives_count tcp_user_timeout sslmode
    sslcompression sslcert sslkey sslpassword sslrootcert sslcrl sslcrldir sslsni
    requirepeer ssl_min_protocol_version ssl_max_protocol_version gssencmode krbsrvname
    gsslib service target_session_attrs load_balance_hosts
    """.split()  # noqa: SIM905 - a word list reads better than 36 quoted strings
)
_SSL_MODES = frozenset(["disable", "allow", "prefer", "require", "verify-ca", "verify-full"])


class PgNotifyError(YokedCacheError):
    """Installing, checking or removing the notification triggers failed (the message says
    what PostgreSQL answered, password redacted)."""


class Target:
    """One PostgreSQL database to connect to: libpq keywords plus a printable URL."""

    __slots__ = ("kwargs", "redacted", "url")

    def __init__(self, kwargs: dict[str, Any], url: str) -> None:
        self.kwargs = kwargs
        self.url = url
        self.redacted = redact_url(url) or ""

    def __repr__(self) -> str:
        return f"<Target {self.redacted}>"


def target_of(engine_or_url: Any, connect_args: Mapping[str, Any] | None = None) -> Target:
    """The database of an Engine, AsyncEngine, ``sqlalchemy.URL`` or URL string.

    Raises:
        ConfigError: not a PostgreSQL URL.
    """
    from sqlalchemy.engine import make_url

    url_obj = getattr(engine_or_url, "url", engine_or_url)
    try:
        url = make_url(url_obj)
    except Exception as exc:
        raise ConfigError(
            f"not a database URL: {redact_url(str(url_obj))}; pass an Engine or a URL such "
            "as postgresql://user@host:5432/db"
        ) from exc
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            f"change notification needs PostgreSQL, got {url.get_backend_name()!r} "
            f"({redact_url(url.render_as_string(hide_password=False))}); on other databases "
            "staleness after outside writes is bounded by the TTL and invalidate_tables()"
        )
    kw: dict[str, Any] = {}
    for key, value in url.query.items():
        v = value[-1] if isinstance(value, tuple) else value
        if key in _LIBPQ:
            kw[key] = v
        elif key == "ssl" and v in _SSL_MODES:  # asyncpg spelling
            kw["sslmode"] = v
    if url.host:
        kw["host"] = url.host
    if url.port:
        kw["port"] = url.port
    if url.username:
        kw["user"] = url.username
    if url.password is not None:
        kw["password"] = url.password
    if url.database:
        kw["dbname"] = url.database
    kw.update(connect_args or {})
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return Target(kw, plain)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency(
            "PostgreSQL change notification needs psycopg 3: pip install 'yokedcache_sa[pg-notify]'"
        ) from exc
    return psycopg


def connect(target: Target, **extra: Any) -> psycopg.Connection[Any]:
    """Open an autocommit psycopg connection to *target* (*extra*: defaults its URL and
    connect_args override).

    Raises:
        PgNotifyError: PostgreSQL could not be reached or refused the login.
    """
    psycopg = _psycopg()
    kw = {"application_name": "yokedcache-pgnotify", **extra, **target.kwargs}
    try:
        return psycopg.connect(autocommit=True, **kw)  # type: ignore[no-any-return]
    except psycopg.Error as exc:
        raise PgNotifyError(
            f"cannot connect to {target.redacted}: {redact_text(str(exc), target.url)}"
        ) from exc


def quote_ident(name: str) -> str:
    """*name* as a PostgreSQL identifier, always quoted."""
    return '"' + name.replace('"', '""') + '"'


def split_qualified(payload: str) -> list[tuple[str | None, str]]:
    """Parse ``schema.table[,schema.table…]`` of ``format('%I.%I')`` identifiers.

    Returns ``(schema, table)`` pairs (schema None when the name is bare).

    Raises:
        ValueError: malformed text.
    """
    out: list[tuple[str | None, str]] = []
    parts: list[str] = []
    i, n = 0, len(payload)
    while True:
        if i < n and payload[i] == '"':
            j = i + 1
            buf: list[str] = []
            while True:
                k = payload.find('"', j)
                if k < 0:
                    raise ValueError(f"unterminated quoted name in {payload!r}")
                buf.append(payload[j:k])
                if k + 1 < n and payload[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            parts.append("".join(buf))
        else:
            j = i
            while j < n and payload[j] not in ".,":
                j += 1
            if j == i or '"' in payload[i:j]:
                raise ValueError(f"empty or badly quoted name in {payload!r}")
            parts.append(payload[i:j])
            i = j
        if i < n and payload[i] == ".":
            i += 1
            continue
        if len(parts) > 2:
            raise ValueError(f"too many dots in {payload!r}")
        out.append((parts[0], parts[1]) if len(parts) == 2 else (None, parts[0]))
        parts = []
        if i >= n:
            return out
        if payload[i] != ",":
            raise ValueError(f"unexpected {payload[i]!r} in {payload!r}")
        i += 1
