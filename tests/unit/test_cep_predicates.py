from __future__ import annotations

from typing import Any

import pytest

from fabric.conditions import ConditionError, compile_predicate, getter

EV: dict[str, Any] = {
    "type": "log.entry", "tenant": "acme",
    "data": {"level": "ERROR", "service": "orders-api", "latency": 320.5, "attrs": {"route": "/pay/card"},
             "tags": ["a", "b"], "none": None},
}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "log.entry"}, True),
        ({"type": "log.other"}, False),
        ({"data.level": {"$eq": "ERROR"}}, True),
        ({"data.level": {"$ne": "ERROR"}}, False),
        ({"data.missing": {"$ne": "x"}}, True),
        ({"data.level": {"$in": ["ERROR", "FATAL"]}}, True),
        ({"data.level": {"$nin": ["ERROR", "FATAL"]}}, False),
        ({"data.missing": {"$nin": ["x"]}}, True),
        ({"data.latency": {"$gt": 300}}, True),
        ({"data.latency": {"$gte": 320.5}}, True),
        ({"data.latency": {"$lt": 320.5}}, False),
        ({"data.latency": {"$lte": 320.5, "$gt": 100}}, True),
        ({"data.level": {"$gt": 3}}, False),  # different types: False, not an error
        ({"data.missing": {"$lt": 3}}, False),
        ({"data.none": {"$lt": 3}}, False),
        ({"data.attrs.route": {"$regex": "^/pay/"}}, True),
        ({"data.latency": {"$regex": "3"}}, False),
        ({"data.attrs.route": {"$exists": True}}, True),
        ({"data.attrs.nope": {"$exists": False}}, True),
        ({"data.tags.1": "b"}, True),
        ({"data.level": {"$not": {"$in": ["INFO"]}}}, True),
        ({"$and": [{"type": "log.entry"}, {"data.level": "ERROR"}]}, True),
        ({"$or": [{"type": "x"}, {"data.service": {"$regex": "orders"}}]}, True),
        ({"$not": {"data.level": "ERROR"}}, False),
        ({"type": "log.entry", "data.level": "INFO"}, False),
        ({}, True),
    ],
)
def test_operators(spec: dict[str, Any], expected: bool) -> None:
    assert compile_predicate(spec)(EV) is expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"data.level": {"$in": "ERROR"}}, "where.data.level.$in: $in needs a list"),
        ({"data.x": {"$regex": "("}}, "where.data.x.$regex: not a valid regular expression"),
        ({"data.x": {"$near": 1}}, "where.data.x.$near: unknown operator $near"),
        ({"$xor": []}, "unknown operator $xor"),
        ({"$or": []}, "where.$or: $or needs a non-empty list"),
        ({"data.x": {"$gt": [1]}}, "$gt needs a number or a string"),
        ({"data.x": {"$exists": 1}}, "$exists needs true or false"),
        (["x"], "a condition must be a mapping"),
    ],
)
def test_errors_name_pattern_field_and_problem(spec: Any, message: str) -> None:
    with pytest.raises(ConditionError) as e:
        compile_predicate(spec, owner="pattern 'deploy-burst'")
    assert "pattern 'deploy-burst'" in str(e.value) and message in str(e.value)


def test_getter_reads_nested_and_lists() -> None:
    assert getter("data.attrs.route")(EV) == "/pay/card"
    assert getter("data.tags.0")(EV) == "a"
    assert getter("data.tags.9")(EV) is getter("nope")(EV)


def test_getter_on_other_mappings_and_odd_shapes() -> None:
    from types import MappingProxyType

    ev = MappingProxyType({"data": MappingProxyType({"level": "ERROR"}), "type": "x"})
    assert getter("data.level")(ev) == "ERROR" and getter("type")(ev) == "x"
    assert getter("data.level")({"data": "not a mapping"}) is getter("nope")({})
    assert getter("data.tags.1.x")({"data": {"tags": [0, {"x": 5}]}}) == 5


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({"type": "log.entry", "data.level": "ERROR"}, {"log.entry"}),
        ({"type": {"$in": ["a", "b"]}}, {"a", "b"}),
        ({"type": {"$eq": "a"}}, {"a"}),
        ({"$or": [{"type": "a"}, {"type": "b", "x": 1}]}, {"a", "b"}),
        ({"$and": [{"type": {"$in": ["a", "b"]}}, {"type": "b"}]}, {"b"}),
        ({"$or": [{"type": "a"}, {"x": 1}]}, None),  # one branch accepts any type
        ({"type": {"$ne": "a"}}, None),
        ({"data.level": "ERROR"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_the_values_a_condition_pins_down(spec: Any, types: set[str] | None) -> None:
    from fabric.conditions import values_required

    found = values_required(spec, "type")
    assert (set(found) if found is not None else None) == types
    if found is not None:  # and the predicate agrees: any other type fails it
        assert not compile_predicate(spec)({"type": "zzz", "x": 1, "data": {"level": "ERROR"}})


def test_cep_turns_away_events_of_types_no_condition_accepts() -> None:
    from fabric.cep.matcher import event_types, relevance
    from fabric.cep.patterns import load_patterns

    p = load_patterns(
        "- {name: a, sequence: {within: 1m, steps: [{where: {type: deploy.finished}}, {where: {type: log.entry}}]}}\n"
        "- {name: b, aggregate: {fn: count, window: {kind: sliding, size: 1m}, when: {$gt: 1}}}\n"
    )
    assert event_types(p[0]) == {"deploy.finished", "log.entry"} and event_types(p[1]) is None
    assert relevance(p[0])({"type": "log.entry"}) and not relevance(p[0])({"type": "metric.sample"})


CANDIDATE_PATTERNS = """
- name: burst-a
  key: data.service
  sequence:
    within: 1m
    steps:
      - {where: {type: {$regex: "^(deploy|release)\\\\."}, data.service: {$in: [a1, a2]}}}
      - {where: {type: log.entry, data.level: ERROR, data.service: {$in: [a1, a2]}}}
- name: burst-b
  key: data.service
  sequence:
    within: 1m
    steps:
      - {where: {type: {$regex: "^(deploy|release)\\\\."}, data.service: b1}}
      - {where: {type: log.entry, data.level: ERROR, data.service: b1}}
- name: any-log
  key: subject
  aggregate: {where: {type: {$regex: "^log\\\\."}}, fn: count, window: {kind: sliding, size: 1m}, when: {$gt: 1}}
- name: no-type
  key: subject
  aggregate: {where: {data.level: FATAL}, fn: count, window: {kind: sliding, size: 1m}, when: {$gt: 1}}
"""


@pytest.mark.parametrize(
    ("event", "names"),
    [
        ({"type": "release.done", "data": {"service": "a2"}}, {"burst-a"}),
        ({"type": "deploy.finished", "data": {"service": "b1"}}, {"burst-b"}),
        ({"type": "log.entry", "data": {"service": "a1", "level": "ERROR"}}, {"burst-a", "any-log"}),
        ({"type": "log.entry", "data": {"service": "zz", "level": "ERROR"}}, {"any-log"}),
        ({"type": "log.entry", "data": {"service": ["a1"]}}, {"any-log"}),  # unhashable: no pin holds
        ({"type": "metric.sample", "data": {"service": "a1"}}, set()),
        ({"type": "metric.sample", "data": {"level": "FATAL"}}, {"no-type"}),
        ({"type": ["x"]}, set()),
    ],
)
def test_candidates_are_found_by_type_then_by_a_pinned_value(event: dict[str, Any], names: set[str]) -> None:
    """The index never leaves out a pattern whose conditions accept the event (the conditions
    still run on what it finds)."""
    from fabric.cep.matcher import Candidates, relevance
    from fabric.cep.patterns import load_patterns

    patterns = load_patterns(CANDIDATE_PATTERNS)
    found = Candidates((p, p.name) for p in patterns)
    assert set(found(event)) == names
    assert {p.name for p in patterns if relevance(p)(event)} <= set(found(event))
