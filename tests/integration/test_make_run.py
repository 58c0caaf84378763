"""``fabric run`` (what ``make run`` starts): the scenario plays, composites fire, and a stop
signal leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fabric.settings import ClickHouseSettings, KafkaSettings, RedisSettings, RouterSettings, Settings, WorkerSettings
from tests.integration.conftest import BROKER, ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def run_env(tmp_path: Path, **router: Any) -> dict[str, str]:
    """The environment of a ``fabric run`` on free loopback ports under ``tmp_path``."""
    s = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(
            bootstrap=f"127.0.0.1:{free_port()}", controller_port=free_port(), session_timeout_ms=3000, broker=BROKER
        ),
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),
        clickhouse=ClickHouseSettings(url=f"chdb://{tmp_path / 'chdb'}"),
        router=RouterSettings(port=free_port(), **router),
        worker=WorkerSettings(metrics_port=0),
    )
    return {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")} | s.to_env()


def test_fabric_run_with_a_duration_exits_0_past_idle_heartbeats(tmp_path: Path) -> None:
    """The demo's other tenant gets heartbeats while idle; they are not leaked pushes
    (``make run`` left for 15 s or more ended with an error)."""
    env = run_env(tmp_path, heartbeat_s=1.0) | {"FABRIC_RUN_DURATION": "6"}
    done = subprocess.run([sys.executable, "-m", "fabric", "run"], env=env, capture_output=True, text=True,
                          timeout=240, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "tenant globex received 0 pushes (isolation)" in done.stdout


def test_fabric_run_plays_the_scenario_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = run_env(tmp_path)
    log = tmp_path / "run.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fabric", "run"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        deadline = time.monotonic() + 120
        # the composites, and the reaction to the latency one: an incident with the last deploy
        wanted = ("COMPOSITE composite.deploy-then-error-burst", "COMPOSITE composite.latency-slo-breach",
                  "WORKFLOW workflow.completed latency-incident", "INCIDENT INC-")  # fmt: skip
        while [w for w in wanted if w not in log.read_text()]:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        text = log.read_text()
        assert "pull PageDSL/orders-list: 'Orders v3'" in text
        assert "tenant globex received 0 pushes (isolation)" in text
        assert re.search(r"INCIDENT INC-\d+ for orders-api \(last deploy v2\.4\.1 by ci@orders\)", text), text[-3000:]
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        assert len(pids) == 5  # broker, redis, worker, sink, router
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "stopped: worker, sink, router and the stack" in text
    assert re.search(r"events in ClickHouse \(.*\): Composite \d+", text), text[-2000:]
    assert not [p for p in pids if alive(p)]
