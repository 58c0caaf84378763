"""The bundled pattern library fires on the situations it names, and only on them."""

from __future__ import annotations

from pathlib import Path

from fabric.cep.patterns import load_patterns
from fabric.testing import composites, ev, run_patterns

LIBRARY = (Path(__file__).resolve().parents[2] / "fabric" / "schemas" / "patterns" / "library.yaml").read_text()


def fired(events: list[dict[str, object]], flush_s: float = 10_000) -> list[tuple[str, str]]:
    return [(c.pattern, c.key) for c in composites(run_patterns(LIBRARY, events, flush_to_ms=int(flush_s * 1000)))]


def test_library_loads() -> None:
    assert [p.name for p in load_patterns(LIBRARY)] == [
        "deploy-then-error-burst", "latency-slo-breach", "page-edit-collision", "missing-heartbeat",
        "schema-change-then-query-errors",
    ]  # fmt: skip


def test_deploy_then_error_burst() -> None:
    events = [ev("deploy.finished", 0, service="orders-api")] + [
        ev("log.entry", 10 + i, service="orders-api", level="ERROR", message="boom") for i in range(5)
    ]
    assert fired(events) == [("deploy-then-error-burst", "t|orders-api")]
    assert fired(events[:-1]) == []


def test_latency_slo_breach() -> None:
    ok = [ev("metric.sample", i * 10, service="api", name="latency_ms", value=200.0) for i in range(20)]
    slow = [ev("metric.sample", 200 + i * 10, service="api", name="latency_ms", value=900.0) for i in range(5)]
    assert fired(ok) == []
    assert fired(ok + slow) == [("latency-slo-breach", "t|api")]


def test_page_edit_collision() -> None:
    edits = [ev("page.updated", i * 5, subject="orders-list", tenant="acme", author=a) for i, a in enumerate("ababa")]
    assert fired(edits) == [("page-edit-collision", "acme|orders-list")]
    assert fired([ev("page.updated", i * 30, subject="p", tenant="acme") for i in range(5)]) == []


def test_missing_heartbeat() -> None:
    beats = [
        ev("metric.sample", t, subject="db-1", tenant="acme", name="heartbeat", value=1.0) for t in range(0, 100, 10)
    ]
    assert fired(beats, flush_s=150) == []
    assert fired(beats, flush_s=200) == [("missing-heartbeat", "acme|db-1")]


def test_schema_change_then_query_errors() -> None:
    events = [ev("schema.altered", 0, table="orders", change="altered")] + [
        ev("log.entry", 60 + i, service="reports", level="ERROR", table="orders") for i in range(3)
    ]
    assert fired(events) == [("schema-change-then-query-errors", "t|orders")]
