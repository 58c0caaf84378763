from __future__ import annotations

import pytest

from fabric.router.contexts import freshness
from fabric.router.hub import compile_patterns
from fabric.router.ingest import Rejected, split_body
from fabric.router.state import HTTPProblem
from fabric.topics.registry import Registry


def test_glob_patterns_over_event_types() -> None:
    m = compile_patterns(["page.*", "saas.account.?pdated"])
    assert m.match("page.updated") and m.match("saas.account.updated")
    assert not m.match("pages.updated") and not m.match("log.entry") and not m.match("xpage.updated")
    assert compile_patterns(["*"]).match("anything.at.all")


def test_split_body_forms() -> None:
    assert split_body(b'{"a": 1}', "application/json") == [({"a": 1}, 8)]
    assert [e for e, _ in split_body(b'[{"a": 1}, 2]', "application/json")] == [{"a": 1}, 2]  # type: ignore[misc]
    items = split_body(b'{"a": 1}\n{"b": 2}\n', "application/json")
    assert [i[0] for i in items] == [{"a": 1}, {"b": 2}]  # type: ignore[index]
    items = split_body(b'{"a": 1}\nnope\n', "application/x-ndjson")
    assert isinstance(items[1], Rejected) and items[1].pointer == "/1"
    with pytest.raises(HTTPProblem, match="empty body"):
        split_body(b"  ", "application/json")


def test_freshness_flags_stale_past_ttl(registry: Registry) -> None:
    metric = registry["Metric"]
    assert metric.ttl_s == 300
    as_of, age, stale = freshness(1_000_000, metric, now_ms=1_000_000 + 299_000)
    assert (age, stale) == (299_000, False) and as_of == "1970-01-01T00:16:40.000Z"
    assert freshness(0, metric, now_ms=301_000)[2] is True
    assert freshness(0, registry["PageDSL"], now_ms=10**12)[2] is False  # no TTL
