"""The provider SDK and ``fabric query`` on the real stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from fabric.errors import InvalidEvent
from fabric.providers import Provider
from tests.integration.conftest import ROOT, Fabric, eventually

pytestmark = pytest.mark.integration


async def test_sdk_publishes_validates_locally_and_reports(
    fabric: Fabric, http: httpx.AsyncClient, tenant: str
) -> None:
    async with Provider(fabric.settings, source="lowcode://designer", tenant=tenant) as p:
        await p.publish(p.event("page.updated", "home", {"app": "a", "page": "home", "title": "Home"}, sequence=1))
        with pytest.raises(InvalidEvent) as e:
            await p.publish(p.event("page.updated", "home", {"app": "a", "page": "home"}, sequence=2))
        assert e.value.pointer == "/data" and "title" in e.value.reason
        good = [p.event("log.entry", "api", {"service": "api", "level": "INFO", "message": f"m{i}"}) for i in range(50)]
        bad = p.event("log.entry", "api", {"service": "api", "level": "LOUD", "message": "x"})
        report = await p.publish_many([*good[:25], bad, *good[25:]])
        assert report.sent == [g.id for g in good]
        assert [(i, err.pointer) for i, err in report.invalid] == [(bad.id, "/data/level")]

    async def window() -> int:
        r = await http.get("/v1/contexts/LogEntry/api")
        return len(r.json()["window"]) == 50 and r.json()["changes"] == 50 if r.status_code == 200 else 0

    await eventually(window)
    body = (await http.get("/v1/contexts/PageDSL/home")).json()
    assert body["sequence"] == 1 and body["event"]["provider"] == "lowcode://designer"


def test_query_works_without_a_running_fabric(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    env.update({"FABRIC_DATA_DIR": str(tmp_path), "FABRIC_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}"})
    r = subprocess.run(
        [sys.executable, "-m", "fabric", "query", "SELECT count() AS n FROM fabric.events", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout) == [{"n": 0}]
    bad = subprocess.run(
        [sys.executable, "-m", "fabric", "query", "SELECT nope FROM fabric.events"],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 1 and "nope" in bad.stderr
