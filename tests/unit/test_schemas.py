from __future__ import annotations

from typing import Any

import jsonschema
import msgspec
import pytest

from fabric.errors import InvalidEvent
from fabric.events.catalogue import Catalogue
from fabric.events.codecs import validate
from fabric.events.envelope import Envelope
from fabric.events.schemas import avro_to_json_schema
from fabric.router.edge import EdgeValidator

CONTEXT_TYPES = [
    "PageDSL",
    "BPMN",
    "SQLSchema",
    "LogEntry",
    "Metric",
    "DocChunk",
    "SaaSRecord",
    "Composite",
    "Workflow",
]


def test_every_context_type_has_avro_json_schema_and_msgspec_type(catalogue: Catalogue) -> None:
    assert sorted(catalogue.context_types) == sorted(CONTEXT_TYPES)
    for name in CONTEXT_TYPES:
        schema = catalogue.schemas.json_schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["properties"]["data"]["type"] == "object"
        assert set(schema["required"]) == {"id", "source", "type", "subject", "tenant", "data"}


def test_avro_types_translate_to_json_schema() -> None:
    record = {
        "type": "record", "name": "R", "fields": [
            {"name": "s", "type": "string"},
            {"name": "n", "type": ["null", "long"], "default": None},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
            {"name": "m", "type": {"type": "map", "values": "double"}, "default": {}},
            {"name": "a", "type": {"type": "array", "items": "boolean"}},
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        ],
    }  # fmt: skip
    js = avro_to_json_schema(record)
    assert js["required"] == ["s", "e", "a", "t"]
    assert js["additionalProperties"] is False
    p = js["properties"]
    assert p["n"] == {"type": ["null", "integer"]}
    assert p["e"] == {"type": "string", "enum": ["A", "B"]}
    assert p["m"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert p["a"] == {"type": "array", "items": {"type": "boolean"}}
    assert p["t"] == {"type": "string", "format": "date-time"}


SAMPLES: list[tuple[str, dict[str, Any], bool]] = [
    ("page.updated", {"app": "a", "page": "p", "title": "t"}, True),
    ("page.updated", {"app": "a", "page": "p", "title": None}, False),
    ("bpmn.deployed", {"process_id": "p", "name": "n", "version": 2, "elements": [{"id": "e", "kind": "task"}]}, True),
    ("bpmn.deployed", {"process_id": "p", "name": "n", "version": "2"}, False),
    (
        "schema.altered",
        {"database": "d", "table": "t", "change": "altered", "columns": [{"name": "c", "type": "Int"}]},
        True,
    ),
    ("schema.altered", {"database": "d", "table": "t", "change": "renamed"}, False),
    ("log.entry", {"service": "s", "level": "ERROR", "message": "m", "attributes": {"k": 1, "z": None}}, True),
    ("log.entry", {"service": "s", "level": "error", "message": "m"}, False),
    ("metric.sample", {"name": "n", "value": 1.5, "labels": {"a": "b"}}, True),
    ("metric.sample", {"name": "n", "value": 1.5, "labels": {"a": 1}}, False),
    ("doc.chunked", {"doc_id": "d", "chunk": 0, "text": "hello", "url": "https://x/presigned"}, True),
    ("doc.chunked", {"doc_id": "d", "chunk": 0}, False),
    ("saas.account.updated", {"system": "crm", "object": "A", "record_id": "1", "fields": {"x": True}}, True),
    ("saas.account.updated", {"system": "crm", "object": "A", "record_id": 1}, False),
]


@pytest.mark.parametrize(("etype", "data", "valid"), SAMPLES)
def test_json_schema_and_worker_validation_agree(
    catalogue: Catalogue, etype: str, data: dict[str, Any], valid: bool
) -> None:
    """The HTTP edge (JSON Schema) and the worker (msgspec) accept and refuse the same events."""
    event = {"id": "1", "source": "s", "type": etype, "subject": "x", "tenant": "t", "data": data}
    edge = EdgeValidator(catalogue, 1 << 20).check(0, dict(event), "t", 100)
    env = msgspec.convert({k: v for k, v in event.items() if k != "data"}, Envelope)
    env = msgspec.structs.replace(env, data=msgspec.Raw(msgspec.json.encode(data)))
    try:
        validate(env, catalogue)
        worker_ok = True
    except InvalidEvent:
        worker_ok = False
    assert (edge is None) == valid
    assert worker_ok == valid


def test_edge_refuses_what_the_worker_would_even_when_json_schema_allows_it(catalogue: Catalogue) -> None:
    """A float with an integral value passes JSON Schema's "integer" but not the worker's decoder."""
    event = {"id": "1", "source": "s", "type": "page.updated", "subject": "x", "tenant": "t", "sequence": 1.5e29,
             "data": {"app": "a", "page": "p", "title": "t"}}  # fmt: skip
    problem = EdgeValidator(catalogue, 1 << 20).check(3, event, "t", 100)
    assert problem is not None and problem.pointer == "/3/sequence" and "got `float`" in problem.error
