from __future__ import annotations

import pytest

from fabric.events.catalogue import Catalogue
from fabric.router import bodies
from fabric.router.edge import Rejected
from fabric.router.freshness import freshness
from fabric.router.hub import compile_patterns
from fabric.router.ingest import split_body
from fabric.router.problems import HTTPProblem


def test_glob_patterns_over_event_types() -> None:
    m = compile_patterns(["page.*", "saas.account.?pdated"])
    assert m.match("page.updated") and m.match("saas.account.updated")
    assert not m.match("pages.updated") and not m.match("log.entry") and not m.match("xpage.updated")
    assert compile_patterns(["*"]).match("anything.at.all")


async def test_split_body_forms() -> None:
    assert await split_body(b'{"a": 1}', "application/json", 10) == [({"a": 1}, 8)]
    assert [e for e, _ in await split_body(b'[{"a": 1}, 2]', "application/json", 10)] == [{"a": 1}, 2]  # type: ignore[misc]
    items = await split_body(b'{"a": 1}\n{"b": 2}\n', "application/json", 10)
    assert [i[0] for i in items] == [{"a": 1}, {"b": 2}]  # type: ignore[index]
    items = await split_body(b'{"a": 1}\nnope\n', "application/x-ndjson", 10)
    assert isinstance(items[1], Rejected) and items[1].pointer == "/1"
    with pytest.raises(HTTPProblem, match="empty body"):
        await split_body(b"  ", "application/json", 10)
    with pytest.raises(HTTPProblem, match="not valid JSON"):
        await split_body(b"[1, 2", "application/json", 10)


async def test_split_body_refuses_more_events_than_a_request_may_carry() -> None:
    with pytest.raises(HTTPProblem, match="holds 11 events, over the limit of 10") as e:
        await split_body(b"[" + b"1," * 10 + b"1]", "application/json", 10)
    assert e.value.status == 413
    # a big body: split in the helper process (the event loop stays free), refused all the same
    n = bodies.INLINE_BYTES  # lines of 2 bytes: twice the inline size
    body = b"1\n" * n
    with pytest.raises(HTTPProblem, match=f"holds {n} lines") as e:
        await split_body(body, "application/x-ndjson", 10_000)
    assert e.value.status == 413
    assert len(await split_body(body, "application/x-ndjson", 10**6)) == n
    bodies.shutdown()


def test_freshness_flags_stale_past_ttl(catalogue: Catalogue) -> None:
    metric = catalogue["Metric"]
    assert metric.ttl_s == 300
    as_of, age, stale = freshness(1_000_000, metric, now_ms=1_000_000 + 299_000)
    assert (age, stale) == (299_000, False) and as_of == "1970-01-01T00:16:40.000Z"
    assert freshness(0, metric, now_ms=301_000)[2] is True
    assert freshness(0, catalogue["PageDSL"], now_ms=10**12)[2] is False  # no TTL
