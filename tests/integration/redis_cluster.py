"""A three-master Redis Cluster on loopback from Debian's ``redis-server`` and
``redis-cli``, with a password, for tests; stopped (and its files removed) on exit."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from fabric.dev.procs import free_port
from fabric.dev.stack import redis_binary

PASSWORD = "cluster-test-secret"


@contextlib.contextmanager
def redis_cluster(workdir: Path, masters: int = 3) -> Iterator[list[int]]:
    """Yield the ports of ``masters`` nodes that together serve all 16,384 slots."""
    ports = [free_port() for _ in range(masters)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            d = workdir / f"redis-{port}"
            d.mkdir(parents=True)
            with (d / "log").open("wb") as log:
                procs.append(subprocess.Popen(
                    [str(redis_binary()), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(d),
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-port", str(free_port()), "--cluster-node-timeout", "2000",
                     "--save", "", "--appendonly", "no", "--requirepass", PASSWORD, "--masterauth", PASSWORD],
                    stdout=log, stderr=subprocess.STDOUT,
                ))  # fmt: skip
        for port in ports:
            _wait(lambda p=port: _ask(p, "PING"), f"redis node on {port}")
        subprocess.run(
            ["redis-cli", "-a", PASSWORD, "--no-auth-warning", "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for port in ports:
            _wait(lambda p=port: b"cluster_state:ok" in _ask(p, "CLUSTER", "INFO"), f"cluster state on {port}")
        yield ports
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def url(port: int) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{port}/0"


def _ask(port: int, *command: str) -> Any:
    with redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=2) as r:
        return r.execute_command(*command)


def _wait(ok: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def owner_of(ports: list[int], slot: int) -> tuple[int, str]:
    """(port, node id) of the master serving ``slot``."""
    nodes = _ask(ports[0], "CLUSTER", "NODES")
    text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    for line in text.splitlines():
        node_id, addr, flags, *_rest = line.split()
        if "master" not in flags:
            continue
        for r in line.split()[8:]:
            lo, _, hi = r.partition("-")
            if r[0].isdigit() and int(lo) <= slot <= int(hi or lo):
                return int(addr.split("@")[0].rsplit(":", 1)[1]), node_id
    raise AssertionError(f"no master serves slot {slot}")


def move_slot(ports: list[int], slot: int, to_port: int) -> None:
    """Move one slot with its keys to the master at ``to_port``, as a resharding does."""
    src_port, src_id = owner_of(ports, slot)
    dst_id = _ask(to_port, "CLUSTER", "MYID")
    dst_id = dst_id.decode() if isinstance(dst_id, bytes) else dst_id
    _ask(to_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id)
    _ask(src_port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id)
    while keys := _ask(src_port, "CLUSTER", "GETKEYSINSLOT", str(slot), "100"):
        _ask(src_port, "MIGRATE", "127.0.0.1", str(to_port), "", "0", "5000", "AUTH", PASSWORD, "KEYS",
             *(k.decode() if isinstance(k, bytes) else k for k in keys))  # fmt: skip
    for port in ports:
        _ask(port, "CLUSTER", "SETSLOT", str(slot), "NODE", dst_id)
