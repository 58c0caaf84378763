"""The workflow engine's logic with recorded effects (the real stack: tests/integration/test_workflows.py)."""

from __future__ import annotations

import asyncio
import copy
import random
from typing import Any

import pytest

from fabric.workflows import governance
from fabric.workflows.actions import StepFailed
from fabric.workflows.breaker import Breakers
from fabric.workflows.engine import Engine
from fabric.workflows.runs import RunState, Status, decode, encode, idempotency_key, run_id
from fabric.workflows.spec import ActionSpec, StepSpec
from fabric.workflows.systems import System, parse_system

ORDER: dict[str, Any] = {
    "name": "order-processing", "version": 2,
    "triggers": [{"event": "order.received", "where": {"data.amount": {"$gt": 1000}}}],
    "phases": [
        {"id": "validation", "type": "parallel", "steps": [
            {"id": "credit", "system": "crm", "http": {"path": "/credit", "body": {"c": "{{ trigger.data.customer }}"}}},
            {"id": "stock", "system": "erp", "mcp": {"tool": "check_stock", "arguments": {"sku": "{{ trigger.data.sku }}"}}},
        ], "success_criteria": {"steps.credit.result.approved": True}},
        {"id": "processing", "type": "sequential", "depends_on": ["validation"], "steps": [
            {"id": "reserve", "system": "erp", "mcp": {"tool": "reserve", "arguments": {"sku": "{{ trigger.data.sku }}"}},
             "compensate": {"system": "erp", "mcp": {"tool": "release", "arguments": {"id": "{{ steps.reserve.result.id }}"}}}},
            {"id": "pay", "system": "crm", "http": {"path": "/pay"}, "retry": {"max_attempts": 3, "backoff": "10ms"},
             "compensate": {"system": "crm", "http": {"path": "/refund"}}},
            {"id": "ship", "system": "wms", "http": {"path": "/ship"}, "retry": {"max_attempts": 2, "backoff": "10ms"}},
        ]},
        {"id": "confirm", "type": "broadcast", "depends_on": ["processing"], "steps": [
            {"id": "mail", "system": "crm", "http": {"path": "/notify"}},
            {"id": "done", "event": {"type": "order.confirmed", "subject": "{{ trigger.subject }}"}},
        ]},
    ],
    "error_handling": [{"type": "system_unavailable", "strategy": "circuit_breaker", "failures": 2,
                        "reset_after": "60s", "fallback": "queue_for_retry"}],
    "monitoring": {"sla_targets": [{"phase": "processing", "max_duration": "5s"}]},
}  # fmt: skip

SYSTEMS = {
    sid: parse_system(
        {"system": {"id": sid, "kind": kind, "endpoint": "http://127.0.0.1:1", "security_level": lvl}}, "acme"
    )
    for sid, kind, lvl in (("crm", "http", "confidential"), ("erp", "mcp", "internal"), ("wms", "http", "internal"))
}


class Recorder:
    """Hooks that record what the engine asked for; ``answers`` say what each action returns."""

    def __init__(self, answers: dict[str, Any] | None = None, crash_after: str | None = None) -> None:
        self.answers = answers or {}
        self.saved: list[bytes] = []
        self.calls: list[tuple[str, str]] = []  # (path or tool, key)
        self.audits: list[tuple[str, str, str, str]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.dead: list[bool] = []
        self.attempts: list[tuple[str, int, str]] = []
        self.crash_after = crash_after

    async def save(self, state: RunState) -> None:
        self.saved.append(encode(state))

    async def act(self, state: RunState, action: ActionSpec, body: Any, system: System | None, key: str,
                  timeout_s: float) -> Any:  # fmt: skip
        name = body.get("path") or body.get("tool") or body.get("type")
        self.calls.append((name, key))
        answer = self.answers.get(name, {"ok": True, "id": f"{name}-1", "approved": True})
        if callable(answer):
            answer = answer()
        if isinstance(answer, StepFailed):
            raise answer
        if self.crash_after == name:
            raise asyncio.CancelledError  # the worker dies after the call, before recording it
        return answer

    def refusal(self, state: RunState, step: StepSpec, action: ActionSpec, template: Any, system: System | None) -> str:
        return governance.refusal(state, step, action, template, system)  # the real rules: pure logic

    def audit(self, state: RunState, step: str, system: str, decision: str, outcome: str) -> None:
        self.audits.append((step, system, decision, outcome))

    def attempt(self, state: RunState, step: Any, attempt: int, outcome: str, error: str, s: int, e: int) -> None:
        self.attempts.append((step.id, attempt, outcome))

    async def announce(self, state: RunState, etype: str, data: dict[str, Any]) -> None:
        self.events.append((etype, data))

    async def dead_letter(self, state: RunState, retry: bool) -> None:
        self.dead.append(retry)

    def finished(self, state: RunState) -> None:
        pass


def new_run(spec: dict[str, Any] = ORDER, sensitivity: str = "internal") -> RunState:
    trigger = {"id": "o-1", "type": "order.received", "subject": "order-1", "tenant": "acme",
               "sensitivity": sensitivity, "data": {"amount": 5000, "customer": "c9", "sku": "X"}}  # fmt: skip
    return RunState(run_id("acme", spec["name"], spec["version"], "o-1"), "acme", spec["name"], spec["version"],
                    copy.deepcopy(spec), trigger)  # fmt: skip


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def engine(rec: Recorder, breakers: Breakers | None = None) -> Engine:
    return Engine(rec, lambda t, s: SYSTEMS.get(s), breakers, sleep=no_sleep, rnd=random.Random(1))


async def test_phases_run_in_order_and_the_outcome_is_announced() -> None:
    rec = Recorder()
    state = await engine(rec).run(new_run())
    assert state.status is Status.SUCCEEDED
    names = [c[0] for c in rec.calls]
    assert set(names[:2]) == {"/credit", "check_stock"}
    assert names[2:5] == ["reserve", "/pay", "/ship"] and set(names[5:]) == {"/notify", "order.confirmed"}
    assert [e[0] for e in rec.events] == ["workflow.completed"]
    assert rec.events[0][1]["steps"]["ship"] == "succeeded"
    assert all(a[2] == "allow" for a in rec.audits) and len(rec.audits) == 7


async def test_a_failing_step_is_retried_then_compensation_runs_newest_first() -> None:
    rec = Recorder({"/ship": StepFailed("server_error", "wms answered 500")})
    state = await engine(rec).run(new_run())
    assert state.status is Status.FAILED and "step ship" in state.reason and "500" in state.reason
    assert [a for a in rec.attempts if a[0] == "ship"] == [("ship", 1, "failed"), ("ship", 2, "failed")]
    undo = [c[0] for c in rec.calls if c[0] in ("release", "/refund")]
    assert undo == ["/refund", "release"]  # pay finished after reserve
    assert state.steps["pay"].compensation is Status.COMPENSATED
    assert [e[0] for e in rec.events] == ["workflow.failed"] and rec.dead == [True]


async def test_the_circuit_opens_and_later_runs_fail_fast() -> None:
    breakers = Breakers()
    down = StepFailed("unavailable", "wms unreachable")
    rec = Recorder({"/ship": down})
    await engine(rec, breakers).run(new_run())  # two failures: the circuit to wms opens
    other = {**ORDER, "name": "other"}
    rec2 = Recorder({"/ship": down})
    state = await engine(rec2, breakers).run(new_run(other))
    assert state.status is Status.FAILED and "circuit to wms is open" in state.reason
    assert "/ship" not in [c[0] for c in rec2.calls]


async def test_a_resumed_run_does_not_redo_finished_steps_and_reuses_the_key() -> None:
    rec = Recorder(crash_after="/pay")
    with pytest.raises(asyncio.CancelledError):
        await engine(rec).run(new_run())
    last = decode(rec.saved[-1])  # what the changelog holds when the worker died
    assert last.steps["reserve"].status is Status.SUCCEEDED and last.steps["pay"].status is Status.RUNNING
    rec2 = Recorder()
    state = await engine(rec2).run(last)
    assert state.status is Status.SUCCEEDED
    names = [c[0] for c in rec2.calls]
    assert "reserve" not in names and "/credit" not in names and names[0] == "/pay"
    pay_keys = {k for n, k in rec.calls + rec2.calls if n == "/pay"}
    assert pay_keys == {idempotency_key(state, "pay")}  # sent twice, with one key: the target does it once


async def test_restricted_context_is_refused_for_a_low_security_system_and_audited() -> None:
    rec = Recorder()
    state = await engine(rec).run(new_run(sensitivity="restricted"))
    assert state.status is Status.FAILED and "would carry restricted context to" in state.reason
    why = "step stock would carry restricted context to erp, whose security level is internal"
    assert ("stock", "erp", "deny", why) in rec.audits
    assert "check_stock" not in [c[0] for c in rec.calls]


async def test_success_criteria_fail_the_phase() -> None:
    rec = Recorder({"/credit": {"approved": False}})
    state = await engine(rec).run(new_run())
    assert state.status is Status.FAILED and "success_criteria" in state.reason
    assert "reserve" not in [c[0] for c in rec.calls]


async def test_an_sla_breach_is_announced_while_the_phase_runs() -> None:
    spec = copy.deepcopy(ORDER)
    spec["monitoring"]["sla_targets"] = [{"phase": "processing", "max_duration": "50ms"}]
    rec = Recorder()
    slow = asyncio.Event()

    async def act(*a: Any) -> Any:
        if a[2].get("path") == "/ship":
            await asyncio.sleep(0.2)
        slow.set()
        return {"approved": True, "id": "x"}

    rec.act = act  # type: ignore[method-assign]
    eng = Engine(rec, lambda t, s: SYSTEMS.get(s), sleep=asyncio.sleep)
    state = await eng.run(new_run(spec))
    kinds = [e[0] for e in rec.events]
    assert kinds == ["workflow.sla_breached", "workflow.completed"]
    assert rec.events[0][1]["phase"] == "processing" and state.phases["processing"].sla_breached
