"""Start real servers (mosquitto, redis-server, prometheus) on free ports in temp dirs, for sink tests.

A missing binary skips the test with a reason (tests/run.sh installs the Debian packages in CI).
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(binary: str) -> str:
    path = shutil.which(binary) or next((p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}")
                                         if Path(p).exists()), None)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package; tests/run.sh installs it)")
    return path


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            output = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


class Server:
    """One server process; `start()` again after `stop()` restarts it on the same port and data dir.

    Its output goes to `server.log` in its work dir, not to a pipe: nobody reads a pipe while the
    test runs, and a chatty server would block once the pipe buffer (64 KiB) is full."""

    def __init__(self, argv: list[str], port: int, workdir: Path) -> None:
        self.argv, self.port, self.workdir = argv, port, workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.log = self.workdir / "server.log"
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc, log=self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def mosquitto(tmp: Path) -> Server:
    binary = need("mosquitto")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "mosquitto.conf"
    # persistence: subscribers' sessions and queued QoS 1 messages survive the broker restart
    # `user`: mosquitto started as root otherwise switches to user "mosquitto", who cannot write here
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {tmp}/\nautosave_interval 1\nset_tcp_nodelay true\n"
                    f"user {getpass.getuser()}\n")
    return Server([binary, "-c", str(conf)], port, tmp)


def redis_server(tmp: Path) -> Server:
    binary = need("redis-server")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    return Server([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp), "--save", "",
                   "--appendonly", "no", "--daemonize", "no"], port, tmp)
