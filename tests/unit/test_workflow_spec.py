"""Workflows as written (seed 000's order processing): what is accepted, and errors that
name the field of a bad one."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from fabric.errors import ConfigError
from fabric.workflows import WorkflowError, compile_workflow, load_workflows

ORDER = yaml.safe_load("""
name: order-processing
version: 2
description: Cross-system order processing (CRM, ERP, WMS)
triggers:
  - event: order.received
    where: {data.amount: {$gt: 1000}, data.customer_type: enterprise}
phases:
  - id: validation
    type: parallel
    steps:
      - id: credit
        system: crm
        http: {method: POST, path: /credit-checks, body: {customer: "{{ trigger.data.customer }}"}}
        timeout: 30s
      - id: stock
        system: erp
        mcp: {tool: check_product_availability, arguments: {sku: "{{ trigger.data.sku }}"}}
        timeout: 45s
    success_criteria: {steps.credit.result.approved: true, steps.stock.result.available: true}
  - id: processing
    type: sequential
    depends_on: [validation]
    steps:
      - id: reserve
        system: erp
        mcp: {tool: reserve_inventory, arguments: {sku: "{{ trigger.data.sku }}"}}
        retry: {max_attempts: 5, backoff: 100ms, max_backoff: 2s}
        compensate: {system: erp, mcp: {tool: release_inventory, arguments: {reservation: "{{ steps.reserve.result.id }}"}}}
      - id: fulfil
        system: wms
        http: {path: /fulfilments, body: {reservation: "{{ steps.reserve.result.id }}"}}
        compensate: {system: wms, http: {method: DELETE, path: "/fulfilments/{{ steps.fulfil.result.id }}"}}
  - id: confirmation
    type: broadcast
    depends_on: [processing]
    steps:
      - id: status
        system: crm
        http: {method: PUT, path: /orders/status, body: {status: confirmed}}
      - id: tell
        event: {type: order.confirmed, subject: "{{ trigger.subject }}", data: {fulfilment: "{{ steps.fulfil.result.id }}"}}
error_handling:
  - {type: system_unavailable, strategy: circuit_breaker, failures: 3, reset_after: 10s, fallback: queue_for_retry}
  - {type: business_rule_violation, strategy: immediate_rollback, notification: ops_team}
monitoring:
  sla_targets:
    - {phase: validation, max_duration: 2m}
    - {phase: processing, max_duration: 5m}
""")


def test_the_seed_order_workflow_is_accepted() -> None:
    wf = compile_workflow(ORDER)
    assert wf.name == "order-processing"
    assert wf.order == ("validation", "processing", "confirmation")
    assert wf.spec.phases[1].steps[0].retry.max_attempts == 5
    assert wf.spec.phases[1].steps[0].retry.backoff == 100
    assert wf.spec.phases[0].steps[1].timeout == 45_000
    assert wf.spec.monitoring.sla_targets[0].max_duration == 120_000
    assert wf.triggered_by({"type": "order.received", "data": {"amount": 5000, "customer_type": "enterprise"}})
    assert not wf.triggered_by({"type": "order.received", "data": {"amount": 50, "customer_type": "enterprise"}})
    assert not wf.triggered_by({"type": "order.cancelled", "data": {"amount": 5000, "customer_type": "enterprise"}})
    ok = {"steps": {"credit": {"result": {"approved": True}}, "stock": {"result": {"available": True}}}}
    assert wf.criteria["validation"](ok)
    assert not wf.criteria["validation"]({"steps": {"credit": {"result": {"approved": False}}}})


def test_phases_run_after_what_they_depend_on_whatever_the_written_order() -> None:
    doc = copy.deepcopy(ORDER)
    doc["phases"] = [doc["phases"][2], doc["phases"][0], doc["phases"][1]]
    assert compile_workflow(doc).order == ("validation", "processing", "confirmation")


def test_composite_triggers_glob() -> None:
    doc = copy.deepcopy(ORDER)
    doc["triggers"] = [{"event": "composite.latency-*"}]
    wf = compile_workflow(doc)
    assert wf.triggered_by({"type": "composite.latency-slo-breach"})
    assert not wf.triggered_by({"type": "composite.deploy-then-error-burst"})


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    parts = path.split("/")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "field", "problem"),
    [
        ("phases/1/depends_on", ["validate"], "phases[1].depends_on", "no phase 'validate'"),
        ("phases/0/depends_on", ["confirmation"], "phases", "cycle: validation -> confirmation -> processing -> validation"),
        ("phases/0/steps/0/timeout", "soon", "phases[0].steps[0].timeout", "not a duration"),
        ("phases/0/steps/0/mcp", {"tool": "x"}, "phases[0].steps[0]", "exactly one action of http, mcp, kafka, event (got http, mcp)"),
        ("phases/0/steps/0/system", KeyError, "phases[0].steps[0]", "an http action needs the target system"),
        ("phases/0/type", "fan-out", "phases[0].type", "must be 'parallel', 'sequential' or 'broadcast'"),
        ("phases/0/steps/0/retry", {"tries": 3}, "phases[0].steps[0].retry.tries", "unknown field"),
        ("phases/0/steps/0/retry", {"on": ["rejected"]}, "phases[0].steps[0].retry.on[0]", "must be 'timeout', 'unavailable' or 'server_error'"),
        ("phases/0/success_criteria", {"steps.credit.result.approved": {"$approx": 1}}, "phases[0].success_criteria.steps.credit.result.approved.$approx", "unknown operator"),
        ("phases/0/success_criteria", {"credit_approved": True}, "phases[0].success_criteria", "must name a step's outcome"),
        ("phases/0/success_criteria", {"steps.reserve.status": "ok"}, "phases[0].success_criteria", "names no step of phase 'validation'"),
        ("triggers/0/where", {"data.amount": {"$gt": [1]}}, "triggers[0].where.data.amount.$gt", "needs a number or a string"),
        ("phases/1/steps/1/id", "reserve", "phases[1].steps[1].id", "step id 'reserve' is used twice"),
        ("phases/0/steps/0/http/body", {"x": "{{ steps.fulfil.result.id }}"}, "phases[0].steps[0].http", "step 'fulfil' has no result yet here"),
        ("phases/0/steps/1/mcp/arguments", {"x": "{{ steps.credit.result.id }}"}, "phases[0].steps[1].mcp", "step 'credit' has no result yet here"),
        ("phases/0/steps/0/http/body", {"x": "{{ env.SECRET }}"}, "phases[0].steps[0].http", "must start with trigger. or steps."),
        ("monitoring/sla_targets/1/phase", "billing", "monitoring.sla_targets[1].phase", "no phase 'billing'"),
        ("phases/0/steps/0/http/path", "credit-checks", "phases[0].steps[0].http.path", "must start with /"),
        ("name", "Order Processing", "name", "must be 1-64"),
        ("triggers", [], "triggers", "needs a non-empty list"),
        ("error_handling/0/strategy", "pray", "error_handling[0].strategy", "must be 'circuit_breaker', 'immediate_rollback' or 'retry'"),
    ],
)  # fmt: skip
def test_a_bad_workflow_is_refused_naming_the_field(path: str, value: Any, field: str, problem: str) -> None:
    with pytest.raises(WorkflowError) as e:
        compile_workflow(_set(ORDER, path, value))
    assert e.value.field == field, str(e.value)
    assert problem in e.value.problem, str(e.value)


def test_a_sequential_step_may_use_an_earlier_steps_result_but_a_parallel_one_may_not() -> None:
    assert compile_workflow(ORDER)  # fulfil uses reserve's result, in a sequential phase
    doc = _set(ORDER, "phases/1/type", "parallel")
    with pytest.raises(WorkflowError, match="step 'reserve' has no result yet here"):
        compile_workflow(doc)


def test_load_workflows_from_yaml() -> None:
    text = yaml.safe_dump({"workflows": [ORDER, _set(ORDER, "name", "order-processing-eu")]})
    assert [w.name for w in load_workflows(text, "orders.yaml")] == ["order-processing", "order-processing-eu"]
    with pytest.raises(ConfigError, match=r"orders\.yaml: workflow 'order-processing' is defined twice"):
        load_workflows(yaml.safe_dump([ORDER, copy.deepcopy(ORDER)]), "orders.yaml")
    with pytest.raises(ConfigError, match=r"orders\.yaml: not YAML"):
        load_workflows("name: [", "orders.yaml")
    # the same document twice by alias: refused before anything expands it
    with pytest.raises(ConfigError, match=r"orders\.yaml: not YAML: YAML aliases \(\*name\) are not accepted"):
        load_workflows(yaml.safe_dump([ORDER, ORDER]), "orders.yaml")
