"""Exceptions raised by yokedcache_sa.

Every exception the library raises on purpose derives from :class:`YokedCacheError`::

    YokedCacheError
    ├── ConfigError (also ValueError)          a setting is invalid; the message names it
    ├── UsageError (also ValueError)           an argument or call is invalid; the message says
    │   │                                      what to pass instead
    │   ├── ArgumentTypeError (also TypeError) an argument has the wrong type
    │   └── NoDefaultCache (also LookupError)  no cache was given and none can be chosen
    ├── BackendError                           the cache store failed an operation
    │   └── BackendUnavailable                 the store cannot be reached (or the breaker is open)
    ├── SerializationError (also TypeError)    a value cannot be encoded; nothing was stored
    ├── CorruptEntryError                      an entry failed to decode (internal: read as a miss)
    ├── InvalidationError                      a commit's invalidation could not be delivered
    └── MissingDependency (also ImportError)   an optional extra is not installed

Errors from redis-py or pydantic never cross the library boundary untranslated; the original
is kept as ``__cause__``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

__all__ = [
    "ArgumentTypeError",
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "CorruptEntryError",
    "InvalidationError",
    "MissingDependency",
    "NoDefaultCache",
    "SerializationError",
    "UsageError",
    "YokedCacheError",
]


class YokedCacheError(Exception):
    """Root of every exception raised by yokedcache_sa."""


class ConfigError(YokedCacheError, ValueError):
    """A configuration value is invalid; the message names the field and a fix."""


class UsageError(YokedCacheError, ValueError):
    """An argument or call is invalid; the message says what to pass instead.

    Added in 0.2.
    """


class ArgumentTypeError(UsageError, TypeError):
    """An argument has the wrong type (a key or tag that is not a string, ...).

    Added in 0.2.
    """


class NoDefaultCache(UsageError, LookupError):
    """No ``cache=`` was given and no default cache can be chosen without guessing.

    Added in 0.2.
    """


class BackendError(YokedCacheError):
    """The cache store failed an operation."""


class BackendUnavailable(BackendError):
    """The cache store cannot be reached, timed out, or the circuit breaker is open."""


class SerializationError(YokedCacheError, TypeError):
    """A value cannot be encoded for the cache; nothing was stored."""


class CorruptEntryError(YokedCacheError):
    """A stored entry is corrupt, truncated, forged, oversized or of another format.

    Raised inside the decoder only; the cache treats such an entry as a miss and counts an
    error, it never reaches a caller of ``get``.
    """


class InvalidationError(YokedCacheError):
    """An invalidation could not be delivered to the cache store.

    The affected tags stay pending in this process (bypassed, retried) until delivered.
    """


class MissingDependency(YokedCacheError, ImportError):
    """An optional dependency is not installed; the message names the pip command."""


# Query options of a Redis URL whose values are shown; every other option is hidden (its
# value, or the whole option when its name is not a known credential name, since a password
# with an unencoded "&" splits into options named after pieces of the password).
_SHOWN_OPTIONS = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_read_size",
        "socket_keepalive",
        "retry_on_timeout",
        "max_connections",
        "health_check_interval",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "timeout",
        "protocol",
        "client_name",
        "decode_responses",
    }
)
_CREDENTIAL_OPTIONS = frozenset(
    {"password", "username", "user", "pass", "passwd", "pwd", "auth", "token", "ssl_password"}
)
_HIDDEN = "***"


class _Parsed:
    """A URL cut the way urllib (and so redis-py) cuts it, with its redacted form."""

    __slots__ = ("redacted", "secrets")
    redacted: str
    secrets: tuple[str, ...]

    def __init__(self, url: str) -> None:
        secrets: list[str] = []
        scheme, sep, rest = url.partition("://")
        if not sep:  # not a URL we can cut: show nothing that could be a credential
            self.redacted = _HIDDEN if ("@" in url or "?" in url) else url
            self.secrets = (url,) if self.redacted == _HIDDEN else ()
            return
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        netloc, tail = rest[:cut], rest[cut:]
        before_query, _q, query = tail.partition("?")
        path, hash_, fragment = before_query.partition("#")
        if not _q and hash_:
            query = ""
        elif _q:
            query, hash2, frag2 = query.partition("#")
            if hash2:
                hash_, fragment = hash2, frag2
        ambiguous = "@" in path or "@" in fragment
        user_part, at, host = netloc.rpartition("@")
        if at:
            user, colon, password = user_part.partition(":")
            shown_user = user if colon else _HIDDEN
            secrets += [password, unquote(password)] if colon else [user, unquote(user)]
            netloc = f"{shown_user}:{_HIDDEN}@{host}" if colon else f"{_HIDDEN}@{host}"
        options = []
        for item in query.split("&") if query else ():
            name, eq, value = item.partition("=")
            if eq and name in _SHOWN_OPTIONS and "@" not in value:
                options.append(item)
                continue
            if "@" in item and not (eq and name.lower() in _CREDENTIAL_OPTIONS):
                ambiguous = True
            secrets += [value, unquote(value), unquote_plus(value)] if eq else [item]
            options.append(f"{name}={_HIDDEN}" if name.lower() in _CREDENTIAL_OPTIONS else _HIDDEN)
        if ambiguous:
            # An "@" after the host: a password holding "/", "?" or "#" unencoded cut the URL
            # elsewhere than its author meant. Hide everything up to the last "@" as well.
            secrets.append(rest[: rest.rfind("@")])
            secrets += [p for p in re.split(r"[/?#&=:@]", rest[: rest.rfind("@")]) if p]
            self.redacted = f"{scheme}://{_HIDDEN}"
        else:
            out = f"{scheme}://{netloc}{path}"
            if options:
                out += "?" + "&".join(options)
            if hash_:
                out += "#" + _HIDDEN
                secrets.append(fragment)
            self.redacted = out
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True))


def redact_url(url: str | None) -> str | None:
    """Return *url* with every credential replaced by ``***``.

    Hidden: the password of ``user:password@`` (or the whole ``secret@`` userinfo), the values
    of ``password=``/``username=`` (any case) and of every query option not known to be
    harmless, percent-encoded or not. A URL too malformed to cut safely is shown as
    ``scheme://***``.
    """
    if url is None:
        return None
    return _Parsed(url).redacted


def redact_text(text: str, url: str | None) -> str:
    """Return *text* (an error message) with *url* and each credential in it replaced.

    For messages of other libraries (redis-py) that may quote the URL or an AUTH argument.
    Credentials shorter than three characters are not searched for.
    """
    if not url:
        return text
    parsed = _Parsed(url)
    if url in text:
        text = text.replace(url, parsed.redacted)
    for secret in parsed.secrets:
        if secret in text:
            text = text.replace(secret, _HIDDEN)
    return text
