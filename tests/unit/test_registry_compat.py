"""Avro compatibility by the spec's resolution rules, with the field named."""

from __future__ import annotations

import copy
from typing import Any

from fabric.registry.compat import check_level, problems

V1: dict[str, Any] = {
    "type": "record", "name": "PageDSL", "namespace": "fabric",
    "fields": [
        {"name": "app", "type": "string"},
        {"name": "title", "type": "string"},
        {"name": "views", "type": "int"},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["draft", "live"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
    ],
}  # fmt: skip


def v2(**change: Any) -> dict[str, Any]:
    s = copy.deepcopy(V1)
    for f in s["fields"]:
        if f["name"] in change:
            f.update(change[f["name"]])
    return s


def test_adding_a_field_with_a_default_is_fully_compatible() -> None:
    new = copy.deepcopy(V1)
    new["fields"].append({"name": "owner", "type": ["null", "string"], "default": None})
    assert check_level("FULL", new, V1) == []


def test_adding_a_field_without_default_breaks_backward_naming_it() -> None:
    new = copy.deepcopy(V1)
    new["fields"].append({"name": "owner", "type": "string"})
    assert check_level("BACKWARD", new, V1) == [
        "backward: .owner: has no default and data written with the other schema lacks it"
    ]
    assert check_level("FORWARD", new, V1) == []  # old readers ignore it


def test_removing_a_field_without_default_breaks_forward() -> None:
    new = copy.deepcopy(V1)
    new["fields"] = [f for f in new["fields"] if f["name"] != "title"]
    assert check_level("BACKWARD", new, V1) == []
    assert check_level("FORWARD", new, V1) == [
        "forward: .title: has no default and data written with the other schema lacks it"
    ]


def test_type_changes_follow_promotions() -> None:
    assert check_level("BACKWARD", v2(views={"type": "long"}), V1) == []  # int -> long promotes
    assert check_level("BACKWARD", v2(views={"type": "string"}), V1) == [
        "backward: .views: type changed from int to string"
    ]
    assert problems(v2(views={"type": ["null", "int"]}), V1) == []  # a union with the writer's type


def test_enum_symbols_and_nested_fields_are_named() -> None:
    fewer = v2(status={"type": {"type": "enum", "name": "Status", "symbols": ["draft"]}})
    assert check_level("BACKWARD", fewer, V1) == ["backward: .status: enum symbol(s) live unknown to the reader"]
    items = v2(tags={"type": {"type": "array", "items": "int"}})
    assert check_level("BACKWARD", items, V1) == ["backward: .tags[]: type changed from string to int"]
    assert check_level("NONE", items, V1) == []
