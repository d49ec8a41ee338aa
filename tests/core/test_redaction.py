"""No credential of a Redis URL in any output: reprs, the redacted URL, logged warnings and
raised error messages, for every form redis-py accepts (no Redis needed: a closed port)."""

from __future__ import annotations

import logging
import socket

import pytest

from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.errors import YokedCacheError, redact_text, redact_url

SECRET = "Tr0ub4dor-s3cret"
ENCODED = "p%40ss%2Fw0rd%3Fx"  # p@ss/w0rd?x
DECODED = "p@ss/w0rd?x"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT = _closed_port()
H = f"127.0.0.1:{PORT}"

FORMS = {
    "userinfo": (f"redis://alice:{SECRET}@{H}/0", SECRET),
    "password-only": (f"redis://:{SECRET}@{H}/0", SECRET),
    "bare-userinfo": (f"redis://{SECRET}@{H}/0", SECRET),
    "query-password": (f"redis://{H}/0?password={SECRET}", SECRET),
    "query-any-case": (f"redis://{H}/0?PassWord={SECRET}&db=0", SECRET),
    "query-username": (f"redis://{H}/0?username={SECRET}&password=x{SECRET}", SECRET),
    "rediss": (f"rediss://default:{SECRET}@{H}/1?ssl_cert_reqs=none", SECRET),
    "unix-query": (f"unix:///tmp/yk-none-{PORT}.sock?password={SECRET}&db=0", SECRET),
    "unix-userinfo": (f"unix://:{SECRET}@/tmp/yk-none-{PORT}.sock", SECRET),
    "encoded-userinfo": (f"redis://:{ENCODED}@{H}/0", DECODED),
    "encoded-query": (f"redis://{H}/0?password={ENCODED}", DECODED),
    "plus-in-query": (f"redis://{H}/0?password=a+{SECRET}", SECRET),
}


# redis-py reads query options case-sensitively: "PassWord=" is refused (ConfigError, see
# test_unknown_url_option_is_a_config_error_without_the_secret), but still redacted
ACCEPTED = [f for f in FORMS if f != "query-any-case"]


@pytest.mark.parametrize("form", FORMS)
def test_secret_is_in_no_repr_str_dump_or_redacted_url(form: str) -> None:
    url, secret = FORMS[form]
    cfg = CacheConfig(redis_url=url, signing_secret=SECRET + "-signing")
    cache = YokedCache(cfg)
    texts = [
        repr(cfg),
        str(cfg),
        str(cfg.model_dump()),
        cfg.model_dump_json(),
        repr(cache),
        repr(cache.backend),
        cfg.redis_url_redacted or "",
        redact_url(url) or "",
    ]
    for text in texts:
        for s in (secret, SECRET, ENCODED):
            assert s not in text, (form, text)
    assert "***" in (cfg.redis_url_redacted or "")
    assert cfg.redis_url is not None and cfg.redis_url.get_secret_value() == url


@pytest.mark.parametrize("form", ACCEPTED)
def test_secret_is_in_no_warning_or_error_when_redis_is_unreachable(
    form: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, secret = FORMS[form]
    cache = YokedCache(CacheConfig(redis_url=url, key_prefix="redact", socket_connect_timeout=0.2))
    messages: list[str] = []
    try:
        with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
            assert cache.get_sync("k") is None  # "cache read failed" warning
            assert cache.set_sync("k", 1) is False
            for call in (cache.connect_sync, lambda: cache.invalidate_tags_sync(["t"])):
                with pytest.raises(YokedCacheError) as info:
                    call()
                messages += [str(info.value), repr(info.value)]
                cause = info.value.__cause__
                while cause is not None:
                    messages.append(str(cause))
                    cause = cause.__cause__
    finally:
        cache.disconnect_sync()
    logged = [r.getMessage() for r in caplog.records]
    assert any("read failed" in m for m in logged)
    for text in logged + messages:
        for s in (secret, SECRET, ENCODED):
            assert s not in text, (form, text)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0?password=pw123&db=2", "redis://h:6379/0?password=***&db=2"),
        ("redis://h/0?PASSWORD=pw123", "redis://h/0?PASSWORD=***"),
        ("redis://bob:pw123@h/0?socket_timeout=1", "redis://bob:***@h/0?socket_timeout=1"),
        ("unix:///run/r.sock?password=pw123", "unix:///run/r.sock?password=***"),
        # an unencoded "/" "?" or "#" in a password cuts the URL elsewhere: hide it all
        ("redis://:pw/123@h/0", "redis://***"),
        ("redis://:pw?123@h/0", "redis://***"),
        ("redis://:pw#123@h/0", "redis://***"),
        # "&" in a query password: the piece after it is no option name to show
        ("redis://h/0?password=pw&123", "redis://h/0?password=***&***"),
        ("redis+sentinel://:pw123@h:26379/m/0", "redis+sentinel://:***@h:26379/m/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redacted_forms(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_scrubs_decoded_and_encoded_credentials() -> None:
    url = f"redis://:{ENCODED}@h/0?password={SECRET}"
    text = f"AUTH {DECODED} failed; url {url}; also {ENCODED} and {SECRET}"
    out = redact_text(text, url)
    for s in (DECODED, ENCODED, SECRET):
        assert s not in out


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://:{SECRET}@h:26379/m",
        f"http://u:{SECRET}@h/0",
        f"redis://:{SECRET}@h:notaport/0",
    ],
)
def test_config_errors_do_not_quote_the_secret(url: str) -> None:
    with pytest.raises(YokedCacheError) as info:
        CacheConfig(redis_url=url)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("option", ["nosuchoption", "PassWord"])
def test_unknown_url_option_is_a_config_error_without_the_secret(option: str) -> None:
    cache = YokedCache(CacheConfig(redis_url=f"redis://{H}/0?{option}={SECRET}"))
    try:
        with pytest.raises(YokedCacheError, match="not usable") as info:
            cache.get_sync("k")
        assert SECRET not in str(info.value)
    finally:
        cache.disconnect_sync()
