from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import fastavro
import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.errors import InvalidEvent, UnknownEventType
from fabric.events import codecs
from fabric.events.catalogue import GENERIC_SCHEMA_ID, Catalogue
from fabric.events.envelope import make_event, to_json

PAGE = {
    "app": "crm",
    "page": "p1",
    "title": "Orders",
    "components": [{"id": "c1", "kind": "table", "props": {"rows": 5, "dense": True}}],
}


def page_env(**kw: Any) -> Any:
    return make_event("page.updated", "p1", PAGE, tenant="acme", source="designer", sequence=3,
                      time=datetime(2026, 1, 1, tzinfo=UTC), **kw)  # fmt: skip


def test_structured_json_round_trip(catalogue: Catalogue) -> None:
    env = page_env(correlationid="c-9")
    decoded = codecs.decode_ingest(to_json(env), [], catalogue)
    assert decoded.id == env.id and decoded.correlationid == "c-9" and decoded.sequence == 3
    ct, data = codecs.validate(decoded, catalogue)
    assert ct.name == "PageDSL" and data.components[0].props == {"rows": 5, "dense": True}


def test_binary_mode_headers_with_json_data(catalogue: Catalogue) -> None:
    headers = [
        ("ce_specversion", b"1.0"), ("ce_id", b"e1"), ("ce_source", b"crm"), ("ce_type", b"saas.deal.won"),
        ("ce_subject", b"D-1"), ("ce_tenant", b"acme"), ("ce_sequence", b"12"),
        ("ce_time", b"2026-03-04T05:06:07Z"), ("content-type", b"application/json"),
    ]  # fmt: skip
    data = {"system": "crm", "object": "Deal", "record_id": "D-1", "fields": {"amount": 10.5}}
    env = codecs.decode_ingest(orjson.dumps(data), headers, catalogue)
    assert (env.id, env.sequence, env.time) == ("e1", 12, datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC))
    ct, decoded = codecs.validate(env, catalogue)
    assert ct.name == "SaaSRecord" and decoded.fields == {"amount": 10.5}


def test_binary_mode_with_avro_data(catalogue: Catalogue) -> None:
    ct = catalogue["LogEntry"]
    body = codecs.avro_encode(
        catalogue.schemas.data_avro("LogEntry"), {"service": "api", "level": "WARN", "message": "slow"}
    )
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"l1"), ("ce_source", b"svc"), ("ce_type", b"log.entry"),
               ("ce_subject", b"api"), ("ce_tenant", b"acme"), ("content-type", b"application/avro")]  # fmt: skip
    env = codecs.decode_ingest(codecs.confluent_frame(ct.data_schema_id, body), headers, catalogue)
    _, data = codecs.validate(env, catalogue)
    assert data.level == "WARN" and data.attributes == {}


def test_binary_mode_rejects_bad_attribute(catalogue: Catalogue) -> None:
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"e1"), ("ce_source", b"s"), ("ce_type", b"page.x"),
               ("ce_subject", b"p"), ("ce_tenant", b"t"), ("ce_sequence", b"twelve")]  # fmt: skip
    with pytest.raises(InvalidEvent) as e:
        codecs.decode_ingest(b"{}", headers, catalogue)
    assert e.value.pointer == "/sequence"
    with pytest.raises(InvalidEvent, match="not valid UTF-8"):
        codecs.decode_ingest(b"{}", [("ce_id", b"\xff\xfe")], catalogue)


def test_confluent_generic_and_typed_envelopes(catalogue: Catalogue) -> None:
    rec = {"id": "g1", "source": "s", "type": "page.updated", "subject": "p1", "tenant": "acme",
           "time": datetime(2026, 1, 1, tzinfo=UTC), "data": orjson.dumps(PAGE)}  # fmt: skip
    generic = codecs.confluent_frame(GENERIC_SCHEMA_ID, codecs.avro_encode(catalogue.schemas.envelope, rec))
    env = codecs.decode_ingest(generic, [], catalogue)
    assert env.id == "g1" and codecs.validate(env, catalogue)[1].title == "Orders"

    typed = dict(rec, data=PAGE, sequence=9)
    value = codecs.confluent_frame(
        catalogue["PageDSL"].schema_id, codecs.avro_encode(catalogue.schemas.avro("PageDSL"), typed)
    )
    env = codecs.decode_ingest(value, [], catalogue)
    assert env.sequence == 9 and codecs.validate(env, catalogue)[1].components[0].id == "c1"


def test_typed_topic_round_trip(catalogue: Catalogue) -> None:
    env = page_env()
    ct, data = codecs.validate(env, catalogue)
    value = codecs.encode_typed(env, ct, data, catalogue)
    assert value[0] == 0 and int.from_bytes(value[1:5], "big") == ct.schema_id
    ct2, rec = codecs.decode_typed(value, catalogue)
    assert ct2 == ct and rec["data"]["components"][0]["props"]["rows"] == 5 and rec["time"] == env.time


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty message"),
        (b"\x00\x00\x00\x00\x63abc", "unknown schema id 99"),
        (b"\x00\x00", "not in the Confluent wire format"),
        (b'{"id": ', "not valid JSON"),
        (b"[1, 2]", "Expected `object`, got `array`"),
        (b'{"id":"1","source":"s","type":"page.x","subject":"p"}', "missing required field `tenant`"),
    ],
)
def test_undecodable_input_names_the_problem(catalogue: Catalogue, value: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        codecs.decode_ingest(value, [], catalogue)


def test_truncated_avro(catalogue: Catalogue) -> None:
    typed = {"id": "1", "source": "s", "type": "page.updated", "subject": "p", "tenant": "t",
             "time": datetime(2026, 1, 1, tzinfo=UTC), "data": PAGE}  # fmt: skip
    value = codecs.confluent_frame(2, codecs.avro_encode(catalogue.schemas.avro("PageDSL"), typed))
    with pytest.raises(InvalidEvent, match="PageDSL envelope"):
        codecs.decode_ingest(value[:-7], [], catalogue)


@pytest.mark.parametrize(
    ("data", "pointer", "message"),
    [
        ({**PAGE, "title": 7}, "/data/title", "Expected `str`, got `int`"),
        (
            {**PAGE, "components": [{"id": "c", "kind": "k", "props": {"x": [1]}}]},
            "/data/components/0/props",
            "Expected",
        ),
        ({**PAGE, "extra": 1}, "/data", "unknown field `extra`"),
        ({"app": "a", "page": "p"}, "/data", "missing required field `title`"),
    ],
)
def test_validation_errors_carry_a_json_pointer(catalogue: Catalogue, data: Any, pointer: str, message: str) -> None:
    env = make_event("page.updated", "p", data, tenant="t", source="s")
    with pytest.raises(InvalidEvent) as e:
        codecs.validate(env, catalogue)
    assert e.value.pointer == pointer and message in e.value.reason


def test_unknown_event_type(catalogue: Catalogue) -> None:
    env = make_event("weather.changed", "p", {}, tenant="t", source="s")
    with pytest.raises(UnknownEventType, match=r"no registry rule maps event type 'weather\.changed'"):
        codecs.validate(env, catalogue)


def test_pointer_escapes_slash_and_tilde() -> None:
    err = msgspec.ValidationError("Expected `str`, got `int` - at `$.a/b.c~d[3]`")
    assert codecs.pointer_of(err, "/data") == ("Expected `str`, got `int`", "/data/a~1b/c~0d/3")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_escape_as_anything_but_invalid_event(catalogue: Catalogue, value: bytes) -> None:
    try:
        env = codecs.decode_ingest(value, [], catalogue)
        codecs.validate(env, catalogue)
    except InvalidEvent:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256), st.integers(min_value=0, max_value=20))
def test_fuzzed_avro_bodies_with_known_schema_ids(catalogue: Catalogue, body: bytes, schema_id: int) -> None:
    try:
        env = codecs.decode_ingest(codecs.confluent_frame(schema_id, body), [], catalogue)
        codecs.validate(env, catalogue)
    except InvalidEvent:
        pass


def test_fastavro_reads_what_the_fabric_writes(catalogue: Catalogue) -> None:
    """The typed topics are plain Confluent-framed Avro any Avro reader can decode."""
    env = page_env()
    ct, data = codecs.validate(env, catalogue)
    value = codecs.encode_typed(env, ct, data, catalogue)
    rec = fastavro.schemaless_reader(io.BytesIO(value[5:]), catalogue.schemas.avro("PageDSL"), None)
    assert rec["data"]["title"] == "Orders"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            b'{"id":"1","source":"s","type":"page.x","subject":"p","tenant":"t","data":'
            + b"[" * 50_000
            + b"]" * 50_000
            + b"}",
            "nested too deeply",
        ),
        (b'{"id":"\xff\xfe","source":"s","type":"page.x","subject":"p","tenant":"t"}', "not valid UTF-8"),
    ],
)
def test_deep_nesting_and_bad_utf8_are_invalid_events(catalogue: Catalogue, value: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        codecs.validate(codecs.decode_ingest(value, [], catalogue), catalogue)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=30,
    )
)
def test_any_json_as_data_is_accepted_or_refused_cleanly(catalogue: Catalogue, data: Any) -> None:
    env = make_event("page.updated", "p", data, tenant="t", source="s")
    try:
        codecs.validate(codecs.decode_ingest(to_json(env), [], catalogue), catalogue)
    except InvalidEvent as e:
        assert e.pointer.startswith("/data")


@pytest.mark.parametrize("tenant", ["a/b", "{x}", "", "_lead", "x" * 65, "sp ace"])
def test_a_tenant_that_could_break_keys_is_refused(catalogue: Catalogue, tenant: str) -> None:
    env = make_event("page.updated", "p", PAGE, tenant=tenant, source="s")
    with pytest.raises(InvalidEvent) as e:
        codecs.validate(env, catalogue)
    assert e.value.pointer == "/tenant"
