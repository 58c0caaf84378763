from __future__ import annotations

from pathlib import Path

import pytest

from fabric.errors import ConfigError, UnknownEventType
from fabric.events.catalogue import Catalogue
from fabric.settings import load_settings


def test_defaults_are_loopback_and_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("FABRIC_"):
            monkeypatch.delenv(k)
    s = load_settings()
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.router.port == 8700
    assert s.clickhouse.embedded and s.clickhouse.chdb_path == Path(".fabric/chdb")
    assert s.topic("ingest") == "ctx.ingest"
    with pytest.raises(ValueError, match="frozen"):
        s.kafka.bootstrap = "x"  # type: ignore[misc]


def test_nested_variables_and_short_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABRIC_KAFKA__TOPIC_PREFIX", "acme")
    monkeypatch.setenv("FABRIC_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    monkeypatch.setenv("FABRIC_CLICKHOUSE_URL", "http://127.0.0.1:8123")
    monkeypatch.setenv("FABRIC_ROUTER__PORT", "9000")
    s = load_settings()
    assert s.kafka.topic_prefix == "acme" and s.kafka.bootstrap == "127.0.0.1:19092"
    assert not s.clickhouse.embedded and s.router.port == 9000
    monkeypatch.setenv("FABRIC_CLICKHOUSE__URL", "chdb:///var/lib/fabric")
    assert load_settings().clickhouse.chdb_path == Path("/var/lib/fabric")


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("FABRIC_CLICKHOUSE__URL", "mysql://x", "clickhouse url must be chdb:///dir"),
        ("FABRIC_REDIS__URL", "memcached://x", "redis url must start with"),
        ("FABRIC_REDIS_URL", "memcached://x", "redis url must start with"),
        ("FABRIC_ROUTER__PORT", "eighty", "router"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, message: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_registry_routes_by_glob_first_match_wins(catalogue: Catalogue) -> None:
    assert catalogue.resolve("page.updated").name == "PageDSL"
    assert catalogue.resolve("process.started").name == "BPMN"
    assert catalogue.resolve("saas.account.updated").kind == "state"
    assert catalogue.resolve("log.entry").kind == "stream"
    with pytest.raises(UnknownEventType):
        catalogue.resolve("pages.updated")


def test_registry_refuses_rules_to_unknown_types(tmp_path: Path) -> None:
    import shutil

    root = Path(__file__).resolve().parents[2] / "fabric" / "schemas"
    shutil.copytree(root, tmp_path / "schemas")
    (tmp_path / "schemas/registry/event-types.yaml").write_text('- {match: "x.*", context_type: Weather}\n')
    with pytest.raises(ConfigError, match="unknown context type 'Weather'"):
        Catalogue.load(tmp_path / "schemas")
    (tmp_path / "schemas/registry/context-types.yaml").write_text(
        "PageDSL: {kind: blob, topic: p, schema: fabric.PageDSL, schema_id: 2, data_schema_id: 12}\n"
    )
    with pytest.raises(ConfigError, match="kind must be state or stream"):
        Catalogue.load(tmp_path / "schemas")
