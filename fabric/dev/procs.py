"""Run ``fabric`` commands as child processes: start, wait until the router answers, stop.

Used by ``fabric run``, the benchmarks and the integration tests, so all three start
the fabric the way a user does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fabric.errors import StackError
from fabric.settings import Settings


def free_port() -> int:
    """A loopback port nobody listens on right now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    def __init__(self, settings: Settings, log_dir: Path | None = None, **extra_env: str) -> None:
        self.settings = settings
        self.log_dir = (log_dir or settings.data_dir / "run").resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.extra_env = extra_env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://{self.settings.router.host}:{self.settings.router.port}"

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
        return {**base, **self.settings.to_env(), **self.extra_env}

    def start(self, command: str, *args: str, name: str | None = None) -> subprocess.Popen[bytes]:
        name = name or command
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "fabric", command, *args],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the router answers and the cache is ready; fails if a child exits."""
        deadline = time.monotonic() + timeout
        while True:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise StackError(
                        f"{name} exited with code {p.returncode} while starting (log: {self.log_dir / name}.log)"
                    )
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=1)
                if r.status_code == 200 and r.json().get("cache_ready"):
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"the router did not answer on {self.url} within {timeout:.0f} s")
            time.sleep(0.1)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[name]
        p.send_signal(sig)
        p.wait(30)

    def stop(self, timeout: float = 20) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
