"""``fabric dev up | down | status`` as a user runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, free_port

pytestmark = pytest.mark.integration


def fabric(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fabric", *args], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def stack_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    env.update({
        "FABRIC_DATA_DIR": str(tmp),
        "FABRIC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "FABRIC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    })  # fmt: skip
    return env


def test_up_is_idempotent_and_down_stops_everything(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    try:
        first = fabric(env, "dev", "up")
        assert first.returncode == 0, first.stderr
        assert first.stdout.count("started") == 2
        second = fabric(env, "dev", "up")
        assert second.returncode == 0 and second.stdout.count("already running") == 2
        pids_first = [line.split("pid ")[1].split()[0] for line in first.stdout.splitlines()]
        pids_second = [line.split("pid ")[1].split()[0] for line in second.stdout.splitlines()]
        assert pids_first == pids_second
        status = fabric(env, "dev", "status")
        assert status.returncode == 0 and status.stdout.count(" up ") == 2
        assert (tmp_path / "run" / "broker.log").exists()
    finally:
        down = fabric(env, "dev", "down")
    assert down.returncode == 0 and down.stdout.count("stopped") == 2
    status = fabric(env, "dev", "status")
    assert status.returncode == 1 and status.stdout.count(" down ") == 2
    for pid in pids_first:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1]


def test_a_taken_port_fails_with_one_clear_sentence(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    port = int(env["FABRIC_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        r = fabric(env, "dev", "up")
    fabric(env, "dev", "down")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"fabric: cannot start broker: port {port} on 127.0.0.1 is taken by another process "
        "(stop it or choose another port in FABRIC_* settings)"
    )


def test_a_missing_binary_is_named(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    env["PATH"] = "/nonexistent"
    # Apache Kafka needs the JDK
    r = fabric(env, "dev", "up", "--broker", "kafka")
    fabric(env, "dev", "down")
    assert r.returncode == 1
    assert "java is not on PATH" in r.stderr
    # Tansu starts from the wheel; Redis is looked up on PATH
    r = fabric(env, "dev", "up", "--broker", "tansu")
    fabric(env, "dev", "down")
    assert r.returncode == 1
    assert "redis-server is not on PATH" in r.stderr
