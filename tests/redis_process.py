"""A private redis-server for tests that kill, pause or restart Redis (never the shared one)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis as redis_py

__all__ = ["RedisProcess", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A redis-server this test owns: started, SIGKILLed, SIGSTOPped and restarted on one port.

    No persistence (``--save '' --appendonly no``): a restart is a server without data.
    """

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        password: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None, "already running"
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        if self.workdir is not None:
            cmd += ["--dir", str(self.workdir)]
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with redis_py.Redis(
                    port=self.port, socket_timeout=0.5, password=self.password
                ) as r:
                    if r.ping():
                        return
            except redis_py.exceptions.ConnectionError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: the server and everything it held are gone."""
        if self.proc is not None:
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None
            self.paused = False

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGSTOP:
            self.paused = True
        elif sig == signal.SIGCONT:
            self.paused = False

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill, then start an empty server on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()

    def client(self) -> redis_py.Redis:
        return redis_py.Redis(port=self.port, socket_timeout=5, password=self.password)

    def connections_received(self) -> int:
        with self.client() as r:
            return int(r.info("stats")["total_connections_received"])
