"""Injection policies: parsing, errors naming the field, references between sections."""

from __future__ import annotations

import pytest

from fabric.assembly.policy import parse_policies, policy_from, ref_values, resolve
from fabric.assembly.store import PolicyStore
from fabric.errors import ConfigError
from fabric.settings import Settings


def test_the_bundled_policies_parse() -> None:
    store = PolicyStore.bundled(Settings().security.injection_file)
    page = store.get("page-copilot")
    assert page is not None
    assert [s.context_type for s in page.sections] == ["PageDSL", "SQLSchema", "Composite", "LogEntry", "Metric"]


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"name": "p", "sections": []}, "sections"),
        ({"name": "p", "sections": [{"context_type": "X", "top_k": 0}]}, "sections.0.top_k"),
        ({"name": "p", "sections": [{"context_type": "X", "colour": 1}]}, "sections.0.colour"),
        ({"name": "bad name!", "sections": [{"context_type": "X"}]}, "name"),
        ({"name": "p", "sections": [{"context_type": "X", "where": {"a": {"$nope": 1}}}]}, "sections"),
    ],
)
def test_a_bad_policy_names_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        policy_from(doc)


def test_refs_take_values_from_earlier_sections() -> None:
    found = {"PageDSL": [{"data": {"entities": ["orders", "customers"]}}, {"data": {"entities": ["orders"]}}]}
    assert ref_values("PageDSL.data.entities", found) == ["orders", "customers"]
    spec = {"data.table": {"$in": {"$ref": "PageDSL.data.entities"}}, "subject": "$subject"}
    assert resolve(spec, "p1", found) == {"data.table": {"$in": ["orders", "customers"]}, "subject": "p1"}
    assert resolve(["x", {"$ref": "PageDSL.data.entities"}], "p1", found) == ["x", "orders", "customers"]
    assert ref_values("Missing.data.x", found) == []


def test_versions_are_kept_and_the_highest_is_current() -> None:
    [v1] = parse_policies("name: p\nsections: [{context_type: PageDSL}]")
    store = PolicyStore([v1])
    v2 = v1.model_copy(update={"version": store.next_version("p"), "budget_tokens": 10})
    store.put(v2)
    assert store.get("p") == v2 and store.get("p", 1) == v1 and store.next_version("p") == 3
    store.apply_record("p@2", None)  # a tombstone removes that version
    assert store.get("p") == v1
