"""Which context a step may send where: the target system's security level against the
sensitivity of what the step carries.

A step carries its declared ``sensitivity`` (``internal`` unless said), and the trigger's
sensitivity too when any of its templates reads the trigger. A system receives context up
to its ``security_level``; a Kafka record to a topic outside the fabric counts as a system
of level ``internal``; an event back into the fabric stays inside the tenant and is not
limited. A refusal names the step, the level and the system, and is audited as a denial
(``workflow.step``, decision ``deny``)."""

from __future__ import annotations

from typing import Any

from fabric.events.envelope import LEVEL, LEVELS
from fabric.workflows.runs import RunState
from fabric.workflows.spec import ActionSpec, StepSpec
from fabric.workflows.systems import System
from fabric.workflows.templates import names_trigger

KAFKA_LEVEL = LEVEL["internal"]


def carried_level(step: StepSpec, template: Any, trigger: dict[str, Any]) -> int:
    """The most sensitive context the step sends: its own level, and the trigger's when
    any template of the action (as written, before rendering) reads the trigger."""
    level = LEVEL[step.sensitivity]
    if names_trigger(template):
        level = max(level, LEVEL.get(str(trigger.get("sensitivity", "internal")), LEVEL["internal"]))
    return level


def refusal(state: RunState, step: StepSpec, action: ActionSpec, template: Any, system: System | None) -> str:
    """Why this action may not run ('' when it may); ``template`` is the action as written."""
    if action.kind == "event":
        return ""
    level = carried_level(step, template, state.trigger)
    allowed, target = (
        (system.level, system.id) if system is not None else (KAFKA_LEVEL, f"topic {template.get('topic')}")
    )
    if level > allowed:
        return (f"step {step.id} would carry {LEVELS[level]} context to {target}, "
                f"whose security level is {LEVELS[allowed]}")  # fmt: skip
    return ""
