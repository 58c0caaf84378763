"""A workflow run's durable state: what the changelog holds, one record per run.

The record is rewritten after every transition (a step started, finished, failed,
compensated; a phase started, finished, breached its SLA), before the fabric acts on
the next one. A worker that dies mid-run leaves the last record; whoever owns the
run's partition next reads it and goes on from there (``fabric.workflows.engine``).

Each step carries an idempotency key derived from (tenant, workflow, version, trigger
event id, step): the same on every attempt and after every restart, so a target that
honours ``Idempotency-Key`` performs the effect once even when a step is sent again
because the worker died between the call and recording its answer.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Any

import msgspec


class Status(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"


FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED})


class StepState(msgspec.Struct, omit_defaults=True):
    id: str
    phase: str
    system: str = ""
    kind: str = ""  # http | mcp | kafka | event
    status: Status = Status.PENDING
    attempts: int = 0
    started_ms: int = 0
    ended_ms: int = 0
    result: Any = None
    error: str = ""
    error_kind: str = ""
    #: when it finished, counting from 1 in the run: compensation runs in the reverse of this
    order: int = 0
    compensation: Status | None = None
    compensation_error: str = ""


class PhaseState(msgspec.Struct, omit_defaults=True):
    id: str
    status: Status = Status.PENDING
    started_ms: int = 0
    ended_ms: int = 0
    sla_breached: bool = False


class RunState(msgspec.Struct, omit_defaults=True):
    run_id: str
    tenant: str
    workflow: str
    version: int
    #: the workflow as written when the run started (a later version does not change a run)
    spec: dict[str, Any]
    trigger: dict[str, Any]
    status: Status = Status.PENDING
    started_ms: int = 0
    ended_ms: int = 0
    reason: str = ""
    phases: dict[str, PhaseState] = msgspec.field(default_factory=dict)
    steps: dict[str, StepState] = msgspec.field(default_factory=dict)
    finished_steps: int = 0
    #: the outcome event went out (so a resumed run does not publish it twice)
    announced: bool = False

    @property
    def trigger_id(self) -> str:
        return str(self.trigger.get("id", ""))

    def context(self) -> dict[str, Any]:
        """What templates and success criteria see: the trigger and each step's outcome."""
        return {
            "trigger": self.trigger,
            "steps": {s.id: {"status": s.status.value, "result": s.result, "attempts": s.attempts,
                             "error": s.error} for s in self.steps.values()},
        }  # fmt: skip


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(RunState)


def encode(state: RunState) -> bytes:
    return _enc.encode(state)


def decode(raw: bytes) -> RunState:
    return _dec.decode(raw)


def run_id(tenant: str, workflow: str, version: int, trigger_id: str) -> str:
    """One run per (workflow version, trigger event): the same trigger read twice is one run."""
    return hashlib.sha256(f"{tenant}\0{workflow}\0{version}\0{trigger_id}".encode()).hexdigest()[:24]


def idempotency_key(state: RunState, step: str, compensation: bool = False) -> str:
    """The key a step's every attempt carries (``Idempotency-Key``, the event id of an event action)."""
    raw = f"{state.tenant}\0{state.workflow}\0{state.version}\0{state.trigger_id}\0{step}"
    if compensation:
        raw += "\0compensate"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]
