"""``fabric systems discover``: workflow steps checked against an MCP tool's input schema."""

from __future__ import annotations

from typing import Any

from fabric.workflows.discover import Tool, check_steps
from fabric.workflows.spec import compile_workflow

RESERVE = Tool("reserve", "Reserve stock", {
    "type": "object", "required": ["sku", "quantity"],
    "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
})  # fmt: skip


def wf(arguments: dict[str, Any], tool: str = "reserve", system: str = "erp") -> Any:
    return compile_workflow({
        "name": "orders", "triggers": [{"event": "order.received"}],
        "phases": [{"id": "p", "steps": [
            {"id": "hold", "system": system, "mcp": {"tool": tool, "arguments": arguments},
             "compensate": {"system": system, "mcp": {"tool": "release", "arguments": {}}}}]}],
    })  # fmt: skip


def test_a_fitting_step_and_templated_arguments_pass() -> None:
    ok = wf({"sku": "{{ trigger.data.sku }}", "quantity": 2})
    release = Tool("release", "", {"type": "object", "properties": {}})
    assert check_steps([ok], "erp", [RESERVE, release]) == []


def test_missing_unknown_and_mistyped_arguments_are_named() -> None:
    problems = check_steps([wf({"quantity": "two", "colour": "red"})], "erp", [RESERVE])
    assert "workflow 'orders', step hold: tool reserve needs argument 'sku'" in problems
    assert any("takes no argument 'colour'" in p for p in problems)
    assert any("argument 'quantity' of tool reserve: 'two' is not of type 'integer'" in p for p in problems)
    # the compensation calls a tool the system does not have
    assert "workflow 'orders', step hold compensation: erp has no tool 'release' (it has reserve)" in problems


def test_steps_of_other_systems_are_not_checked() -> None:
    assert check_steps([wf({}, system="crm")], "erp", [RESERVE]) == []
