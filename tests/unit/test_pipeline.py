from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from fabric.events.catalogue import Catalogue
from fabric.events.codecs import decode_typed
from fabric.events.envelope import make_event, to_json
from fabric.pipeline.enrich import Enricher
from fabric.pipeline.materialize import change_from_record
from fabric.pipeline.route import Routing
from fabric.settings import Settings


def record(
    value: bytes, offset: int = 0, headers: list[tuple[str, bytes]] | None = None
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("ctx.ingest", 0, offset, 0, 0, b"k", value, None, len(b"k"), len(value), headers or [])


PAGE = {"app": "a", "page": "p", "title": "t"}


def test_route_splits_good_and_bad_without_stopping(catalogue: Catalogue) -> None:
    router = Routing(Settings(), catalogue)
    good = to_json(make_event("page.updated", "p", PAGE, tenant="acme", source="d", sequence=1))
    log = to_json(
        make_event("log.entry", "api", {"service": "api", "level": "INFO", "message": "m"}, tenant="acme", source="s")
    )
    bad = orjson.dumps(
        {"id": "2", "source": "d", "type": "page.updated", "subject": "p", "tenant": "acme", "data": {"app": 1}}
    )
    result = router.route(
        [record(good, 0, [("fabric_provider", b"sdk")]), record(b"\x00junk", 1), record(bad, 2), record(log, 3)]
    )
    assert [o.topic for o in result.ok] == ["ctx.page", "ctx.log"]
    assert result.ok[0].key == b"acme/p"
    ct, rec = decode_typed(result.ok[0].value, catalogue)
    assert ct.name == "PageDSL" and rec["provider"] == "sdk" and rec["traceparent"].startswith("00-")
    assert rec["receivedtime"] is not None and rec["contexttype"] == "PageDSL"
    assert [d.topic for d in result.dead] == ["ctx.dlq", "ctx.dlq"]
    h = dict(result.dead[1].headers)
    assert h["fabric_error_pointer"] == b"/data/app" and h["fabric_original_offset"] == b"2"
    assert result.dead[1].value == bad  # the original bytes, untouched


def test_enrich_fills_time_sequence_and_keeps_what_was_given(catalogue: Catalogue) -> None:
    enrich = Enricher()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ct = catalogue["PageDSL"]
    given = make_event("page.updated", "p", PAGE, tenant="t", source="s", sequence=7, traceparent="00-a-b-01")
    e = enrich(given, ct, "sdk", now)
    assert (e.sequence, e.traceparent, e.provider, e.time) == (7, "00-a-b-01", "sdk", now)
    bare = make_event("page.updated", "p", PAGE, tenant="t", source="s")
    seqs = [enrich(bare, ct, None, now).sequence for _ in range(3)]
    assert seqs[0] is not None and seqs == sorted(set(seqs))  # strictly increasing
    assert enrich(bare, ct, None, now).provider == "s"


def test_change_from_record_drops_nulls_and_keeps_data(catalogue: Catalogue) -> None:
    rec: dict[str, Any] = {"tenant": "t", "type": "page.updated", "subject": "p", "sequence": 3,
                           "time": datetime(2026, 1, 1, tzinfo=UTC), "correlationid": None,
                           "data": {"title": "x", "route": None}}  # fmt: skip
    c = change_from_record("PageDSL", "state", rec, 42)
    assert c.at_ms == 1767225600000 and c.offset == 42
    assert orjson.loads(c.json) == {"tenant": "t", "type": "page.updated", "subject": "p", "sequence": 3,
                                    "time": "2026-01-01T00:00:00Z", "data": {"title": "x", "route": None}}  # fmt: skip


def test_oversized_event_is_dead_lettered_with_a_cut_original(catalogue: Catalogue) -> None:
    router = Routing(Settings(max_event_bytes=1000), catalogue)
    big = b"{" + b" " * 200_000 + b"}"
    result = router.route([record(big, 7)])
    assert not result.ok
    dead = result.dead[0]
    h = dict(dead.headers)
    assert h["fabric_error_reason"] == b"event is 200002 bytes, over the limit of 1000"
    assert h["fabric_original_size"] == b"200002" and len(dead.value) == 64 * 1024


def test_cache_headers_round_trip_awkward_names(catalogue: Catalogue) -> None:
    from fabric.pipeline.materialize import change_from_headers
    from fabric.pipeline.route import cache_headers

    env = Routing(Settings(), catalogue).enrich(
        make_event("log.entry", "a/b c", {"service": "s", "level": "INFO", "message": "m"}, tenant="t.1", source="s", id="x/y z"),
        catalogue["LogEntry"], None,
    )  # fmt: skip
    c = change_from_headers("LogEntry", "stream", dict(cache_headers(env)), 9)
    assert c is not None and (c.tenant, c.type, c.subject, c.id, c.offset) == ("t.1", "log.entry", "a/b c", "x/y z", 9)


def test_only_redis_errors_about_the_records_dead_letter_them() -> None:
    from redis.exceptions import ResponseError

    from fabric.pipeline.materialize_stage import refuses_records

    assert refuses_records(ResponseError("ERR string exceeds maximum allowed size (proto-max-bulk-len)"))
    assert not refuses_records(ResponseError("OOM command not allowed when used memory > 'maxmemory'."))
    assert not refuses_records(ResponseError("BUSY Redis is busy running a script."))
    assert not refuses_records(ResponseError("LOADING Redis is loading the dataset in memory"))
