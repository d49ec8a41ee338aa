"""CacheConfig: validation names the field, env prefix, password redaction."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from yokedcache_sa import BackendUnavailable, CacheConfig, ConfigError, YokedCache
from yokedcache_sa.errors import YokedCacheError, redact_url

PW = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("YOKEDCACHE_"):
            monkeypatch.delenv(name)


def test_defaults_select_memory() -> None:
    cfg = CacheConfig()
    assert cfg.redis_url is None
    assert cfg.redis_url_redacted is None
    assert cfg.default_ttl == 300.0
    assert YokedCache(cfg).backend.name == "memory"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"default_ttl": 0}, "default_ttl"),
        ({"default_ttl": -5}, "default_ttl"),
        ({"default_ttl": "soon"}, "default_ttl"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"key_prefix": "a:b"}, "key_prefix"),
        ({"key_prefix": "a b"}, "key_prefix"),
        ({"key_prefix": "{x}"}, "key_prefix"),
        ({"key_prefix": "x" * 65}, "key_prefix"),
        ({"max_connections": 0}, "max_connections"),
        ({"circuit_breaker_threshold": 0}, "circuit_breaker_threshold"),
        ({"circuit_breaker_timeout": 0}, "circuit_breaker_timeout"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"socket_timeout": 0}, "socket_timeout"),
        ({"socket_connect_timeout": 61}, "socket_connect_timeout"),
        ({"max_value_bytes": 10}, "max_value_bytes"),
        ({"memory_max_entries": 0}, "memory_max_entries"),
        ({"memory_max_bytes": 10}, "memory_max_bytes"),
        ({"write_lease": 0}, "write_lease"),
        ({"redis_url": "http://localhost:6379"}, "redis_url"),
        ({"redis_url": "redis://"}, "redis_url"),
        ({"redis_url": "redis://host:notaport/0"}, "redis_url"),
        ({"redis_url": 6379}, "redis_url"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        CacheConfig(**kwargs)
    msg = str(info.value)
    assert f"CacheConfig.{field}" in msg
    assert f"YOKEDCACHE_{field.upper()}" in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, YokedCacheError)
    assert info.value.__cause__ is None  # the pydantic error does not leak


@pytest.mark.parametrize(
    "url",
    [
        f"http://:{PW}@localhost:6379/0",
        f"redis://user:{PW}@host:bad/0",
        f"ftp://admin:{PW}@h/",
    ],
)
def test_config_error_never_shows_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        CacheConfig(redis_url=url)
    assert PW not in str(info.value)
    assert PW not in repr(info.value)


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_REDIS_URL", "redis://cache.internal:6380/2")
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_TTL", "12.5")
    monkeypatch.setenv("YOKEDCACHE_KEY_PREFIX", "envapp")
    cfg = CacheConfig()
    assert cfg.redis_url is not None
    assert cfg.redis_url.get_secret_value() == "redis://cache.internal:6380/2"
    assert cfg.default_ttl == 12.5
    assert cfg.key_prefix == "envapp"
    # explicit arguments win over the environment
    assert CacheConfig(key_prefix="arg").key_prefix == "arg"


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_MAX_CONNECTIONS", "-1")
    with pytest.raises(ConfigError, match="YOKEDCACHE_MAX_CONNECTIONS"):
        CacheConfig()


def test_empty_url_means_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_REDIS_URL", "")
    assert CacheConfig().redis_url is None


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (f"redis://:{PW}@localhost:6379/0", "redis://:***@localhost:6379/0"),
        (f"redis://alice:{PW}@localhost:6379/0", "redis://alice:***@localhost:6379/0"),
        (
            f"rediss://default:{PW}@cache.example.com:6380/1",
            "rediss://default:***@cache.example.com:6380/1",
        ),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_password_redacted_in_repr_str_and_property(url: str, redacted: str) -> None:
    cfg = CacheConfig(redis_url=url)
    assert cfg.redis_url_redacted == redacted
    assert redact_url(url) == redacted
    for text in (repr(cfg), str(cfg), repr(YokedCache(cfg))):
        assert PW not in text
    assert redacted in repr(cfg)
    assert cfg.redis_url is not None and cfg.redis_url.get_secret_value() == url


def test_rediss_and_unix_urls_are_accepted() -> None:
    cfg = CacheConfig(redis_url=f"rediss://:{PW}@cache.example.com:6380/0")
    assert cfg.redis_url_redacted == "rediss://:***@cache.example.com:6380/0"
    assert CacheConfig(redis_url="unix:///tmp/redis.sock").redis_url is not None


def test_config_is_frozen() -> None:
    cfg = CacheConfig()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type
        cfg.default_ttl = 5  # type: ignore[misc]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_backend_unavailable_message_has_no_password() -> None:
    # Nothing listens on a just-freed port: the connection is refused at once, no service needed.
    port = _free_port()
    cache = YokedCache(CacheConfig(redis_url=f"redis://:{PW}@127.0.0.1:{port}/0"))
    try:
        with pytest.raises(BackendUnavailable) as info:
            cache.connect_sync()
        msg = str(info.value)
        assert PW not in msg and PW not in repr(info.value)
        assert f"redis://:***@127.0.0.1:{port}/0" in msg
        assert "YOKEDCACHE_REDIS_URL" in msg
    finally:
        cache.disconnect_sync()


# -- issue 13: settings from the environment, and the logger left alone ---------------------


@pytest.mark.parametrize("word", ["none", "None", "NULL", "null", " none "])
def test_env_ttl_none_means_no_expiry(monkeypatch: pytest.MonkeyPatch, word: str) -> None:
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_TTL", word)
    assert CacheConfig().default_ttl is None


def test_env_ttl_empty_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_TTL", "")
    assert CacheConfig().default_ttl == 300.0


def test_env_ttl_garbage_still_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_TTL", "forever-ish")
    with pytest.raises(ConfigError, match="YOKEDCACHE_DEFAULT_TTL"):
        CacheConfig()


def test_unknown_env_variable_warns_once_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import uuid

    typo = "YOKEDCACHE_REDIS_ULR"
    from yokedcache_sa import config as config_mod

    monkeypatch.setattr(config_mod, "_warned_env", set())
    monkeypatch.setenv(typo, "redis://x:6379/0")
    monkeypatch.setenv("YOKEDCACHE_Q" + uuid.uuid4().hex.upper(), "1")
    with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
        CacheConfig()
        CacheConfig()
    typo_lines = [r.getMessage() for r in caplog.records if typo in r.getMessage()]
    assert len(typo_lines) == 1, typo_lines
    assert "did you mean YOKEDCACHE_REDIS_URL?" in typo_lines[0]
    assert "is not a CacheConfig setting" in typo_lines[0]
    assert CacheConfig().redis_url is None  # the typo set nothing


def test_config_does_not_touch_the_logger_level() -> None:
    logger = logging.getLogger("yokedcache_sa")
    before = logger.level
    try:
        logger.setLevel(logging.DEBUG)
        CacheConfig()
        CacheConfig(default_ttl=5)
        CacheConfig(**CacheConfig().model_dump())  # a copy carries log_level="WARNING"
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(before)


def test_explicit_log_level_is_deprecated_and_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("yokedcache_sa")
    before = logger.level
    try:
        with pytest.warns(DeprecationWarning, match="logging.getLogger"):
            cfg = CacheConfig(log_level="error")
        assert cfg.log_level == "ERROR"
        assert logger.level == logging.ERROR
        monkeypatch.setenv("YOKEDCACHE_LOG_LEVEL", "debug")
        with pytest.warns(DeprecationWarning):
            CacheConfig()
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(before)
