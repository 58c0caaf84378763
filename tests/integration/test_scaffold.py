"""``fabric provider scaffold``: generate a provider from an OpenAPI spec and from a SQLite
database, run what was generated, and pull its events; register its manifest."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fabric.client import subject_path
from fabric.kafka.compacted import read_compacted
from fabric.testing import bearer
from tests.integration.conftest import ROOT, Fabric, eventually, loopback_http

pytestmark = pytest.mark.integration

SPEC = ROOT / "tests" / "data" / "crm-openapi.yaml"


@pytest.fixture
def crm_api() -> Iterator[tuple[str, dict[str, list[dict[str, Any]]]]]:
    """A real HTTP API behaving as the spec says; tests change its data."""
    data = {"/api/accounts": [{"id": "A-1", "name": "Initech", "tier": "gold", "arr": 1200}],
            "/api/tickets": [{"number": 7, "title": "Printer on fire", "open": True}]}  # fmt: skip

    def respond(path: str) -> tuple[int, bytes]:
        return (200 if path in data else 404), json.dumps(data.get(path, [])).encode()

    with loopback_http(respond) as url:
        yield f"{url}/api", data


async def pull(fabric: Fabric, tenant: str, subject: str, changes: int = 1) -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=fabric.url, headers=bearer(fabric.settings, tenant), timeout=10) as c:
        r = await c.get(f"/v1/contexts/SaaSRecord/{subject_path(subject)}")
        return r.json() if r.status_code == 200 and r.json()["changes"] >= changes else None


async def test_scaffold_from_openapi_runs_and_publishes(
    fabric: Fabric, tenant: str, tmp_path: Path, crm_api: Any, spawn: Any
) -> None:
    url, data = crm_api
    out = tmp_path / "crm"
    made = fabric.cli("provider", "scaffold", "--openapi", str(SPEC), "--out", str(out), "--owner", "sales-eng")
    assert made.returncode == 0, made.stderr
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())["provider"]
    assert manifest["id"] == "acme-crm" and manifest["owner"] == "sales-eng"
    assert [p["event_type"] for p in manifest["produces"]] == ["saas.account.updated", "saas.ticket.updated"]
    account = json.loads((out / "schemas" / "Account.avsc").read_text())
    assert [(f["name"], f["type"]) for f in account["fields"]] == [
        ("id", "string"),
        ("name", "string"),
        ("tier", ["null", "string"]),
        ("arr", ["null", "long"]),
    ]

    spawn(str(out / "provider.py"), "--tenant", tenant, "--endpoint", url, "--every", "0.3")
    record = await eventually(lambda: pull(fabric, tenant, "A-1"))
    assert record["event"]["data"]["fields"] == {"id": "A-1", "name": "Initech", "tier": "gold", "arr": 1200}
    assert record["event"]["type"] == "saas.account.updated"
    ticket = await eventually(lambda: pull(fabric, tenant, "7"))
    assert ticket["event"]["data"]["object"] == "Ticket"
    data["/api/accounts"][0]["tier"] = "platinum"  # a change in the API becomes a new version
    changed = await eventually(lambda: pull(fabric, tenant, "A-1", changes=2))
    assert changed["event"]["data"]["fields"]["tier"] == "platinum"

    reg = fabric.cli("provider", "register", str(out / "manifest.yaml"))
    assert reg.returncode == 0, reg.stderr
    stored = await read_compacted(fabric.settings, fabric.settings.topic("registry"))
    assert json.loads(stored["provider:acme-crm"] or b"{}")["provider"]["owner"] == "sales-eng"


async def test_scaffold_from_sqlite_runs_and_publishes(fabric: Fabric, tenant: str, tmp_path: Path, spawn: Any) -> None:
    db = tmp_path / "billing.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, total REAL, modified_at INTEGER)"
    )
    con.execute("CREATE TABLE audit_log (line TEXT)")  # no change column: skipped
    con.execute("INSERT INTO invoices VALUES (1, 'Initech', 99.5, ?)", (int(time.time()),))
    con.commit()
    out = tmp_path / "billing"
    made = fabric.cli("provider", "scaffold", "--database", f"sqlite:///{db}", "--out", str(out))
    assert made.returncode == 0, made.stderr
    produces = yaml.safe_load((out / "manifest.yaml").read_text())["provider"]["produces"]
    assert [(p["table"], p["event_type"], p["key"]) for p in produces] == [("invoices", "saas.invoices.updated", "id")]

    spawn(str(out / "provider.py"), "--tenant", tenant, "--every", "0.3")
    invoice = await eventually(lambda: pull(fabric, tenant, "1"))
    assert invoice["event"]["data"]["fields"]["customer"] == "Initech"
    con.execute("UPDATE invoices SET total = 120.0, modified_at = modified_at + 1 WHERE id = 1")
    con.commit()
    con.close()
    again = await eventually(lambda: pull(fabric, tenant, "1", changes=2))
    assert again["event"]["data"]["fields"]["total"] == 120.0


def test_scaffold_refuses_a_bad_spec_with_the_reason(fabric: Fabric, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("openapi: 3.0.3\ninfo: {title: x}\npaths: {}\n")
    made = fabric.cli("provider", "scaffold", "--openapi", str(bad), "--out", str(tmp_path / "x"))
    assert made.returncode == 1 and "not a valid OpenAPI document" in made.stderr and "version" in made.stderr
