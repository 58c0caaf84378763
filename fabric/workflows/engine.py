"""Runs one workflow run from its state to its end: phases in dependency order, steps with
retries and circuit breakers, success criteria, SLA watches, and compensation (a saga)
when a step fails for good.

The engine does nothing to the world itself: every effect goes through ``Hooks`` (the
workflow stage gives Kafka, HTTP, MCP, the audit trail and ClickHouse rows; unit tests
give fakes). ``save`` is awaited after each transition and before the next effect, so a
run resumed from its last saved state never redoes a step it recorded as done, and redoes
an interrupted step with the same idempotency key.

Kinds of failure (``StepFailed.kind``) map onto ``error_handling`` types:
timeout -> ``timeout``; unavailable, server_error, circuit_open -> ``system_unavailable``;
rejected, refused -> ``business_rule_violation``. Steps of a ``broadcast`` phase are
notifications: one that fails is recorded, and the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fabric.workflows.actions import StepFailed
from fabric.workflows.breaker import Breakers, CircuitOpen, backoff_ms
from fabric.workflows.runs import FINISHED, PhaseState, RunState, Status, StepState, idempotency_key
from fabric.workflows.spec import ActionSpec, ErrorHandlingSpec, PhaseSpec, StepSpec, Workflow, compile_workflow
from fabric.workflows.systems import System
from fabric.workflows.templates import TemplateError, render

log = logging.getLogger(__name__)

HANDLING_TYPE = {"timeout": "timeout", "unavailable": "system_unavailable", "server_error": "system_unavailable",
                 "circuit_open": "system_unavailable", "rejected": "business_rule_violation",
                 "refused": "business_rule_violation"}  # fmt: skip
BREAKS_CIRCUIT = frozenset({"timeout", "unavailable", "server_error"})


class Hooks(Protocol):
    async def save(self, state: RunState) -> None:
        """Make the state durable (the changelog); returns once it is."""

    async def act(
        self, state: RunState, action: ActionSpec, body: Any, system: System | None, key: str, timeout_s: float
    ) -> Any:
        """Perform the action with its rendered body; raises StepFailed."""

    def refusal(self, state: RunState, step: StepSpec, action: ActionSpec, template: Any, system: System | None) -> str:
        """Why the access rules keep this action from running ('' when they allow it)."""

    def audit(self, state: RunState, step: str, system: str, decision: str, outcome: str) -> None: ...

    def attempt(self, state: RunState, step: StepState, attempt: int, outcome: str, error: str,
                started_ms: int, ended_ms: int) -> None:  # fmt: skip
        """One attempt of a step (or its compensation) ended: a row for ClickHouse."""

    async def announce(self, state: RunState, etype: str, data: dict[str, Any]) -> None:
        """Publish ``workflow.*`` into the fabric (idempotent: the event id is derived)."""

    async def dead_letter(self, state: RunState, retry: bool) -> None:
        """The failed run's trigger goes to the workflow DLQ with the reason."""

    def finished(self, state: RunState) -> None:
        """The run ended (metrics, the run's row)."""


class PhaseFailed(Exception):
    def __init__(self, phase: str, step: str, failure: StepFailed) -> None:
        super().__init__(f"phase {phase}: step {step}: {failure}" if step else f"phase {phase}: {failure}")
        self.phase, self.step, self.failure = phase, step, failure


def now_ms() -> int:
    return int(time.time() * 1000)


class Engine:
    def __init__(
        self,
        hooks: Hooks,
        system_of: Callable[[str, str], System | None],
        breakers: Breakers | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rnd: random.Random | None = None,
    ) -> None:
        self.hooks = hooks
        self.system_of = system_of
        self.breakers = breakers or Breakers()
        self.sleep = sleep
        self.rnd = rnd

    @staticmethod
    def start(state: RunState, wf: Workflow) -> None:
        """A new run's phases and steps, all pending."""
        state.status, state.started_ms = Status.RUNNING, now_ms()
        for p in wf.spec.phases:
            state.phases[p.id] = PhaseState(p.id)
            for s in p.steps:
                state.steps[s.id] = StepState(s.id, p.id, s.system or "", s.kind)

    async def run(self, state: RunState) -> RunState:
        """Take the run from its saved state to its end."""
        wf = compile_workflow(state.spec)
        if state.status is Status.PENDING:
            self.start(state, wf)
            await self.hooks.save(state)
        failed: PhaseFailed | None = None
        if state.status is Status.RUNNING:
            for pid in wf.order:
                phase = next(p for p in wf.spec.phases if p.id == pid)
                if state.phases[pid].status is Status.SUCCEEDED:
                    continue
                try:
                    await self._phase(wf, state, phase)
                except PhaseFailed as e:
                    failed = e
                    break
            if failed is not None:
                state.status, state.reason = Status.COMPENSATING, str(failed)
                await self.hooks.save(state)
        if state.status is Status.COMPENSATING:
            await self._compensate(wf, state)
            state.status = Status.FAILED
        elif state.status is Status.RUNNING:
            state.status = Status.SUCCEEDED
        if not state.ended_ms:
            state.ended_ms = now_ms()
            await self.hooks.save(state)
            self.hooks.finished(state)
        if state.status in FINISHED and not state.announced:
            await self._announce_end(wf, state, failed)
        return state

    async def _announce_end(self, wf: Workflow, state: RunState, failed: PhaseFailed | None) -> None:
        data = outcome_data(state)
        if state.status is Status.FAILED:
            kind = failed.failure.kind if failed else next(
                (s.error_kind for s in state.steps.values() if s.status is Status.FAILED), "rejected")  # fmt: skip
            handling = self._handling(wf, kind)
            await self.hooks.dead_letter(state, retry=handling is not None and handling.fallback == "queue_for_retry")
            await self.hooks.announce(state, "workflow.failed", data)
        else:
            await self.hooks.announce(state, "workflow.completed", data)
        state.announced = True
        await self.hooks.save(state)

    # ------------------------------------------------------------------ phases

    async def _phase(self, wf: Workflow, state: RunState, phase: PhaseSpec) -> None:
        ps = state.phases[phase.id]
        if ps.status is Status.PENDING:
            ps.status, ps.started_ms = Status.RUNNING, now_ms()
            await self.hooks.save(state)
        sla = next((t.max_duration for t in wf.spec.monitoring.sla_targets if t.phase == phase.id), None)
        watch = asyncio.create_task(self._sla_watch(state, ps, sla)) if sla and not ps.sla_breached else None
        try:
            if phase.type == "sequential":
                for step in phase.steps:
                    await self._step(wf, state, phase, step)
            else:
                got = await asyncio.gather(*(self._step(wf, state, phase, s) for s in phase.steps),
                                           return_exceptions=True)  # fmt: skip
                for g in got:
                    if isinstance(g, BaseException) and not isinstance(g, PhaseFailed):
                        raise g
                failures = [g for g in got if isinstance(g, PhaseFailed)]
                if failures and phase.type == "parallel":
                    raise failures[0]
            criterion = wf.criteria.get(phase.id)
            if criterion is not None and not criterion(state.context()):
                raise PhaseFailed(phase.id, "", StepFailed("rejected", "its success_criteria do not hold"))
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
        ps.status, ps.ended_ms = Status.SUCCEEDED, now_ms()
        if sla and not ps.sla_breached and ps.ended_ms - ps.started_ms > sla:
            await self._breach(state, ps, sla)
        await self.hooks.save(state)

    async def _sla_watch(self, state: RunState, ps: PhaseState, sla_ms: int) -> None:
        """While the phase runs: at its SLA, the breach is announced (not only after it ends)."""
        await self.sleep(max(0.0, (ps.started_ms + sla_ms - now_ms()) / 1000))
        if ps.status is Status.RUNNING and not ps.sla_breached:
            await self._breach(state, ps, sla_ms)
            await self.hooks.save(state)

    async def _breach(self, state: RunState, ps: PhaseState, sla_ms: int) -> None:
        ps.sla_breached = True
        elapsed = (ps.ended_ms or now_ms()) - ps.started_ms
        await self.hooks.announce(state, "workflow.sla_breached", {
            **outcome_data(state), "phase": ps.id, "max_duration_ms": sla_ms, "elapsed_ms": elapsed,
        })  # fmt: skip

    # ------------------------------------------------------------------ steps

    def _handling(self, wf: Workflow, kind: str) -> ErrorHandlingSpec | None:
        want = HANDLING_TYPE.get(kind)
        return next((h for h in wf.spec.error_handling if h.type == want), None)

    async def _step(self, wf: Workflow, state: RunState, phase: PhaseSpec, step: StepSpec) -> None:
        ss = state.steps[step.id]
        if ss.status is Status.SUCCEEDED:
            return
        key = idempotency_key(state, step.id)
        while True:
            ss.status, ss.attempts = Status.RUNNING, ss.attempts + 1
            ss.started_ms = ss.started_ms or now_ms()
            attempt, t0 = ss.attempts, now_ms()
            await self.hooks.save(state)  # the attempt is recorded before it is made
            try:
                ss.result = await self._attempt(wf, state, step.id, step, step, key)
            except StepFailed as e:
                self.hooks.attempt(state, ss, attempt, "failed", str(e), t0, now_ms())
                if e.kind in step.retry.on and attempt < step.retry.max_attempts:
                    await self.sleep(backoff_ms(attempt, step.retry.backoff, step.retry.max_backoff, self.rnd) / 1000)
                    continue
                ss.status, ss.error, ss.error_kind, ss.ended_ms = Status.FAILED, str(e), e.kind, now_ms()
                await self.hooks.save(state)
                raise PhaseFailed(phase.id, step.id, e) from None
            ss.status, ss.ended_ms, ss.error, ss.error_kind = Status.SUCCEEDED, now_ms(), "", ""
            state.finished_steps += 1
            ss.order = state.finished_steps
            await self.hooks.save(state)
            self.hooks.attempt(state, ss, attempt, "succeeded", "", t0, ss.ended_ms)
            return

    async def _attempt(
        self, wf: Workflow, state: RunState, step_id: str, step: StepSpec, action: ActionSpec, key: str
    ) -> Any:
        system = self.system_of(state.tenant, action.system) if action.system else None
        if action.system and system is None:
            raise StepFailed("rejected", f"no system {action.system!r} is registered for tenant {state.tenant!r}")
        template = getattr(action, action.kind).model_dump(exclude_none=True)
        try:
            body = render(template, state.context())
        except TemplateError as e:
            raise StepFailed("rejected", str(e)) from None
        why = self.hooks.refusal(state, step, action, template, system)  # what it reads, before rendering
        target = action.system or action.kind
        if why:
            self.hooks.audit(state, step_id, target, "deny", why)
            raise StepFailed("refused", why)
        breaker = None
        if system is not None:
            h = next((h for h in wf.spec.error_handling if h.strategy == "circuit_breaker"), None)
            if h is not None:
                breaker = self.breakers.of(f"{state.tenant}/{system.id}", h.failures, h.reset_after)
                try:
                    breaker.check(system.id)
                except CircuitOpen as e:
                    self.hooks.audit(state, step_id, target, "allow", f"not sent: {e}")
                    raise StepFailed("circuit_open", str(e)) from None
        # the step's own timeout, else the system's (its SLA), else the default
        given = "timeout" in step.model_fields_set or system is None
        timeout_s = (step.timeout if given else system.spec.sla.timeout) / 1000  # type: ignore[union-attr]
        try:
            result = await self.hooks.act(state, action, body, system, key, timeout_s)
        except StepFailed as e:
            if breaker is not None:
                (breaker.failed if e.kind in BREAKS_CIRCUIT else breaker.succeeded)()
            self.hooks.audit(state, step_id, target, "allow", f"{e.kind}: {e}")
            raise
        if breaker is not None:
            breaker.succeeded()
        self.hooks.audit(state, step_id, target, "allow", "succeeded")
        return result

    async def _compensate(self, wf: Workflow, state: RunState) -> None:
        """Undo what succeeded, newest first; a compensation that fails for good is recorded
        and the others still run."""
        specs = {s.id: s for p in wf.spec.phases for s in p.steps}
        done = sorted((s for s in state.steps.values() if s.status is Status.SUCCEEDED and specs[s.id].compensate),
                      key=lambda s: s.order, reverse=True)  # fmt: skip
        for ss in done:
            if ss.compensation in (Status.COMPENSATED, Status.FAILED):
                continue
            step = specs[ss.id]
            action = step.compensate
            assert action is not None
            key = idempotency_key(state, step.id, compensation=True)
            attempt = 0
            while True:
                attempt += 1
                ss.compensation = Status.COMPENSATING
                await self.hooks.save(state)
                t0 = now_ms()
                try:
                    await self._attempt(wf, state, f"{step.id}.compensate", step, action, key)
                except StepFailed as e:
                    self.hooks.attempt(state, ss, attempt, "compensation_failed", str(e), t0, now_ms())
                    if e.kind in step.retry.on and attempt < step.retry.max_attempts:
                        await self.sleep(
                            backoff_ms(attempt, step.retry.backoff, step.retry.max_backoff, self.rnd) / 1000
                        )
                        continue
                    ss.compensation, ss.compensation_error = Status.FAILED, str(e)
                    break
                ss.compensation = Status.COMPENSATED
                self.hooks.attempt(state, ss, attempt, "compensated", "", t0, now_ms())
                break
            await self.hooks.save(state)


def outcome_data(state: RunState) -> dict[str, Any]:
    """The ``data`` of a ``workflow.*`` event (the Workflow context type)."""
    return {
        "workflow": state.workflow, "version": state.version, "run_id": state.run_id, "status": state.status.value,
        "reason": state.reason, "trigger_id": state.trigger_id, "trigger_type": str(state.trigger.get("type", "")),
        "trigger_subject": str(state.trigger.get("subject", "")),
        "duration_ms": max(0, (state.ended_ms or now_ms()) - state.started_ms),
        "steps": {s.id: s.status.value if s.compensation is None else f"{s.status.value}/{s.compensation.value}"
                  for s in state.steps.values()},
    }  # fmt: skip
