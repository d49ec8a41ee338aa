"""rediss:// (TLS) against a private redis-server with a self-signed certificate."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.redis_process import free_port
from yokedcache_sa import BackendUnavailable, CacheConfig, YokedCache

_SELF_SIGNED = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if IN_CI:
            pytest.fail(f"{tool} is not on PATH; CI=true requires it", pytrace=False)
        pytest.skip(f"{tool} is not on PATH")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS-only redis-server on a free port; yields (port, CA certificate path)."""
    _need("openssl")
    _need("redis-server")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *_SELF_SIGNED,
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            probe = YokedCache(CacheConfig(redis_url=_url(port, cert)))
            try:
                if probe.health_sync():
                    break
            finally:
                probe.disconnect_sync()
            time.sleep(0.05)
        else:
            pytest.fail("the TLS redis-server did not start")
        yield port, cert
    finally:
        proc.kill()
        proc.wait(10)


def _url(port: int, ca: Path, password: str = "") -> str:
    auth = f":{password}@" if password else ""
    return f"rediss://{auth}127.0.0.1:{port}/0?ssl_ca_certs={ca}"


def test_rediss_round_trip(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    c = YokedCache(CacheConfig(redis_url=_url(port, ca), key_prefix="tls"))
    try:
        c.connect_sync()
        assert c.set_sync("k", {"v": 1}, tags=["t"])
        assert c.get_sync("k") == {"v": 1}
        c.invalidate_tags_sync(["t"])
        assert c.get_sync("k") is None
    finally:
        c.disconnect_sync()


async def test_rediss_async_round_trip(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    c = YokedCache(CacheConfig(redis_url=_url(port, ca), key_prefix="tlsa"))
    try:
        await c.connect()
        assert await c.set("k", [1, 2], tags=["t"])
        assert await c.get("k") == [1, 2]
    finally:
        await c.disconnect()


def test_rediss_with_an_untrusted_certificate_is_a_clear_error(
    tls_redis: tuple[int, Path], tmp_path: Path
) -> None:
    port, _ca = tls_redis
    other = tmp_path / "other.pem"
    subprocess.run(
        [
            *_SELF_SIGNED,
            *("-keyout", str(tmp_path / "other-key.pem"), "-out", str(other), "-subj", "/CN=x"),
        ],
        check=True,
        capture_output=True,
    )
    c = YokedCache(CacheConfig(redis_url=_url(port, other, password="s3cret"), key_prefix="tlsx"))
    try:
        with pytest.raises(BackendUnavailable) as info:
            c.connect_sync()
        msg = str(info.value)
        assert "s3cret" not in msg
        assert "certificate" in msg.lower() or "ssl" in msg.lower()
        assert c.get_sync("k") is None  # reads fall back, never raise
    finally:
        c.disconnect_sync()
