"""A workflow as written, checked, and compiled.

    name: order-processing
    version: 1
    triggers:                       # event or composite types, with CEP conditions
      - event: order.received
        where: {data.amount: {$gt: 1000}, data.customer_type: enterprise}
    phases:
      - id: validation
        type: parallel              # parallel | sequential | broadcast
        steps:
          - id: credit
            system: crm             # a target system (manifests)
            http: {method: POST, path: /credit-checks, body: {customer: "{{ trigger.data.customer }}"}}
            timeout: 30s
            retry: {max_attempts: 3, backoff: 200ms, max_backoff: 5s, on: [timeout, unavailable, server_error]}
            compensate: {http: {method: DELETE, path: "/credit-checks/{{ steps.credit.result.id }}"}}
        success_criteria: {steps.credit.result.approved: true}
      - id: processing
        type: sequential
        depends_on: [validation]
        steps: [...]
    error_handling:
      - {type: system_unavailable, strategy: circuit_breaker, failures: 5, reset_after: 30s, fallback: queue_for_retry}
      - {type: business_rule_violation, strategy: immediate_rollback}
    monitoring:
      sla_targets: [{phase: validation, max_duration: 2m}]

A step has exactly one action: ``http`` (a call to the system's endpoint), ``mcp`` (a
tool on the system's MCP server), ``kafka`` (a record to a topic) or ``event`` (an
event published back into the fabric). Templates (``{{ trigger.… }}``,
``{{ steps.ID.result.… }}``) may name the trigger and steps of earlier phases, or
earlier steps of the same sequential phase.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from fabric.cep.patterns import Count, Duration
from fabric.conditions import ConditionError, Predicate, compile_predicate
from fabric.errors import ConfigError
from fabric.specs import field_path, load_yaml_all

NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
TEMPLATE = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
TEMPLATE_ROOTS = ("trigger", "steps")


class WorkflowError(ConfigError):
    """A workflow is wrong: names the workflow, the field and the problem."""

    def __init__(self, workflow: str, field: str, problem: str) -> None:
        super().__init__(f"workflow {workflow!r}: {field}: {problem}" if field else f"workflow {workflow!r}: {problem}")
        self.workflow, self.field, self.problem = workflow, field, problem


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TriggerSpec(_Spec):
    #: an event type (``order.received``) or a composite (``composite.latency-slo-breach``); ``*`` globs
    event: str = Field(min_length=1, max_length=200)
    where: dict[str, Any] | None = None


class HttpAction(_Spec):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    path: str = Field(pattern=r"^/", max_length=2000)
    body: Any = None


class McpAction(_Spec):
    tool: str = Field(min_length=1, max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict)


class KafkaAction(_Spec):
    topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    key: str | None = None
    value: Any = None


class EventAction(_Spec):
    type: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$")
    subject: str = Field(min_length=1, max_length=500)
    data: dict[str, Any] = Field(default_factory=dict)


Retryable = Literal["timeout", "unavailable", "server_error"]
RETRYABLE: tuple[Retryable, ...] = ("timeout", "unavailable", "server_error")


class RetrySpec(_Spec):
    max_attempts: Count = 3
    backoff: Duration = 200
    max_backoff: Duration = 10_000
    #: which errors are retried: timeout, unavailable (refused, unreachable, 503, open
    #: circuit), server_error (other 5xx); ``rejected`` (4xx, a failed criterion) never is
    on: list[Retryable] = Field(default_factory=lambda: list(RETRYABLE))


class ActionSpec(_Spec):
    """Exactly one of the actions."""

    system: str | None = Field(default=None, pattern=NAME)
    http: HttpAction | None = None
    mcp: McpAction | None = None
    kafka: KafkaAction | None = None
    event: EventAction | None = None

    @model_validator(mode="after")
    def _one_action(self) -> ActionSpec:
        given = [k for k in ("http", "mcp", "kafka", "event") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one action of http, mcp, kafka, event (got {', '.join(given) or 'none'})")
        if given[0] in ("http", "mcp") and self.system is None:
            raise ValueError(f"an {given[0]} action needs the target system")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("http", "mcp", "kafka", "event") if getattr(self, k) is not None)


class StepSpec(ActionSpec):
    id: str = Field(pattern=NAME)
    timeout: Duration = 30_000
    retry: RetrySpec = Field(default_factory=RetrySpec)
    #: run, in reverse order, when a later step of the run fails (a saga)
    compensate: ActionSpec | None = None
    #: the context carried to the system is this sensitive at most (access rules decide)
    sensitivity: Literal["public", "internal", "confidential", "restricted"] = "internal"


class PhaseSpec(_Spec):
    id: str = Field(pattern=NAME)
    name: str = ""
    type: Literal["parallel", "sequential", "broadcast"] = "sequential"
    depends_on: list[str] = Field(default_factory=list)
    steps: list[StepSpec] = Field(min_length=1, max_length=100)
    #: conditions over ``steps.ID.result`` (CEP operators), all must hold
    success_criteria: dict[str, Any] | None = None


class ErrorHandlingSpec(_Spec):
    type: Literal["system_unavailable", "business_rule_violation", "timeout"]
    strategy: Literal["circuit_breaker", "immediate_rollback", "retry"]
    failures: Count = 5
    reset_after: Duration = 30_000
    fallback: Literal["queue_for_retry", "fail"] = "fail"
    notification: str | None = None


class SlaTarget(_Spec):
    phase: str
    max_duration: Duration


class MonitoringSpec(_Spec):
    sla_targets: list[SlaTarget] = Field(default_factory=list)


class WorkflowSpec(_Spec):
    name: str = Field(pattern=NAME)
    version: Count = 1
    description: str = ""
    enabled: StrictBool = True
    triggers: list[TriggerSpec] = Field(min_length=1, max_length=50)
    phases: list[PhaseSpec] = Field(min_length=1, max_length=50)
    error_handling: list[ErrorHandlingSpec] = Field(default_factory=list)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)


@dataclass(frozen=True)
class Workflow:
    """A checked workflow: its spec, its trigger conditions compiled, its phases in an
    order that respects ``depends_on``."""

    spec: WorkflowSpec
    triggers: tuple[tuple[re.Pattern[str], Predicate | None], ...]
    order: tuple[str, ...]
    criteria: dict[str, Predicate]

    @property
    def name(self) -> str:
        return self.spec.name

    def triggered_by(self, event: dict[str, Any]) -> bool:
        """Whether this event starts a run."""
        etype = str(event.get("type", ""))
        return any(rx.fullmatch(etype) and (where is None or where(event)) for rx, where in self.triggers)


_SAY = {
    "extra_forbidden": "unknown field",
    "missing": "is required",
    "too_short": "needs a non-empty list",
    "string_pattern_mismatch": "must be 1-64 of a-z 0-9 _ . -",
}


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(p) for p in pattern.split("*")))


def compile_workflow(doc: Any) -> Workflow:
    """Check a workflow as written; a WorkflowError names the field of the first problem."""
    name = str(doc.get("name", "?")) if isinstance(doc, dict) else "?"
    try:
        spec = WorkflowSpec.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        problem = _SAY.get(err["type"], str(err["msg"]).removeprefix("Value error, "))
        if err["type"] == "literal_error":  # pydantic says "Input should be 'a', 'b' or 'c'"
            problem = "must be " + str(err["msg"]).removeprefix("Input should be ")
        if err["type"] == "string_pattern_mismatch" and err["loc"][-1:] in (("path",), ("topic",), ("type",)):
            problem = {"path": "must start with /", "topic": "must be a Kafka topic name",
                       "type": "must be an event type (a-z 0-9 _ . -)"}[str(err["loc"][-1])]  # fmt: skip
        raise WorkflowError(name, field_path(tuple(err["loc"])), problem) from None
    phases = {p.id: i for i, p in enumerate(spec.phases)}
    if len(phases) != len(spec.phases):
        dup = next(p.id for p in spec.phases if sum(q.id == p.id for q in spec.phases) > 1)
        raise WorkflowError(spec.name, "phases", f"phase id {dup!r} is used twice")
    step_ids: dict[str, str] = {}
    for i, phase in enumerate(spec.phases):
        for j, step in enumerate(phase.steps):
            if step.id in step_ids:
                raise WorkflowError(spec.name, f"phases[{i}].steps[{j}].id",
                                    f"step id {step.id!r} is used twice (also in phase {step_ids[step.id]!r})")  # fmt: skip
            step_ids[step.id] = phase.id
        for dep in phase.depends_on:
            if dep not in phases:
                raise WorkflowError(spec.name, f"phases[{i}].depends_on", f"no phase {dep!r}")
    order = _topological(spec)
    triggers = []
    for i, t in enumerate(spec.triggers):
        triggers.append((_glob(t.event), _condition(spec.name, t.where, f"triggers[{i}].where")))
    criteria: dict[str, Predicate] = {}
    for i, phase in enumerate(spec.phases):
        if phase.success_criteria is not None:
            got = _condition(spec.name, phase.success_criteria, f"phases[{i}].success_criteria")
            if got is not None:
                criteria[phase.id] = got
            own = {st.id for st in phase.steps}
            for key in phase.success_criteria:
                parts = key.split(".")
                if key.startswith("$"):
                    continue
                if parts[0] != "steps" or len(parts) < 3:
                    raise WorkflowError(spec.name, f"phases[{i}].success_criteria",
                                        f"{key!r} must name a step's outcome: steps.ID.result.FIELD or steps.ID.status")  # fmt: skip
                if parts[1] not in own:
                    raise WorkflowError(spec.name, f"phases[{i}].success_criteria",
                                        f"{key!r} names no step of phase {phase.id!r}")  # fmt: skip
    _check_templates(spec)
    for i, sla in enumerate(spec.monitoring.sla_targets):
        if sla.phase not in phases:
            raise WorkflowError(spec.name, f"monitoring.sla_targets[{i}].phase", f"no phase {sla.phase!r}")
    return Workflow(spec, tuple(triggers), order, criteria)


def _condition(workflow: str, spec: Any, field: str) -> Predicate | None:
    if spec is None:
        return None
    try:
        return compile_predicate(spec, f"workflow {workflow!r}", field)
    except ConditionError as e:
        raise WorkflowError(workflow, e.field, e.problem) from None


def _topological(spec: WorkflowSpec) -> tuple[str, ...]:
    """Phases in an order that runs each after what it depends on; a cycle is an error."""
    deps = {p.id: list(p.depends_on) for p in spec.phases}
    done: list[str] = []
    state: dict[str, int] = {}  # 1: visiting, 2: done

    def visit(pid: str, path: list[str]) -> None:
        if state.get(pid) == 2:
            return
        if state.get(pid) == 1:
            cycle = " -> ".join([*path[path.index(pid) :], pid])
            raise WorkflowError(spec.name, "phases", f"depends_on makes a cycle: {cycle}")
        state[pid] = 1
        for d in deps[pid]:
            visit(d, [*path, pid])
        state[pid] = 2
        done.append(pid)

    for p in spec.phases:
        visit(p.id, [])
    return tuple(done)


def _templates(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield from TEMPLATE.findall(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _templates(v)
    elif isinstance(value, list):
        for v in value:
            yield from _templates(v)


def _before(spec: WorkflowSpec, phase_id: str) -> set[str]:
    """The phases that certainly finished before ``phase_id`` starts (its dependencies, transitively)."""
    deps = {p.id: p.depends_on for p in spec.phases}
    seen: set[str] = set()
    todo = list(deps[phase_id])
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo += deps[d]
    return seen


def _check_templates(spec: WorkflowSpec) -> None:
    """A template names the trigger, or a step whose result exists when it is used."""
    for i, phase in enumerate(spec.phases):
        earlier = {s.id for p in spec.phases if p.id in _before(spec, phase.id) for s in p.steps}
        for j, step in enumerate(phase.steps):
            own = {s.id for s in phase.steps[:j]} if phase.type == "sequential" else set()
            for part, action in (("", step), ("compensate.", step.compensate)):
                if action is None:
                    continue
                # compensation runs after the step: its own result is there too
                known = earlier | own | ({step.id} if part else set())
                body = getattr(action, action.kind).model_dump(exclude_none=True)
                for expr in _templates(body):
                    root, _, rest = expr.partition(".")
                    where = f"phases[{i}].steps[{j}].{part}{action.kind}"
                    if root not in TEMPLATE_ROOTS:
                        raise WorkflowError(spec.name, where,
                                            f"template {{{{ {expr} }}}} must start with trigger. or steps.")  # fmt: skip
                    if root == "steps":
                        sid = rest.split(".", 1)[0]
                        if sid not in known:
                            raise WorkflowError(spec.name, where,
                                                f"template {{{{ {expr} }}}}: step {sid!r} has no result yet here")  # fmt: skip


def read_workflows(text: str, origin: str = "workflows") -> list[tuple[Workflow, dict[str, Any]]]:
    """Workflows from YAML (documents separated by ``---``, each one workflow, a list, or
    ``{workflows: [...]}``), each checked, with the document as written (what the registry keeps)."""
    try:
        streamed = [d for d in load_yaml_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not YAML: {e}") from None
    docs: list[Any] = []
    for doc in streamed:
        if isinstance(doc, dict) and "workflows" in doc:
            doc = doc["workflows"]
        docs += doc if isinstance(doc, list) else [doc]
    if not docs:
        raise ConfigError(f"{origin}: no workflow in it")
    if not all(isinstance(d, dict) for d in docs):
        raise ConfigError(f"{origin}: a workflow is a mapping (name, triggers, phases)")
    out = [(compile_workflow(d), d) for d in docs]
    names = [w.name for w, _ in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"{origin}: workflow {dup!r} is defined twice")
    return out


def version_conflict(applied: dict[str, Any] | None, wf: Workflow, doc: dict[str, Any]) -> str:
    """Why ``doc`` may not replace the ``applied`` workflow of its name ('' when it may): a
    change needs a new version, or runs of one version would differ by when they started."""
    if applied is not None and applied.get("version", 1) == wf.spec.version and applied != doc:
        return (f"workflow {wf.name!r}: version {wf.spec.version} is applied with other content; "
                "give the change a new version")  # fmt: skip
    return ""


def unregistered_systems(wf: Workflow, systems: Iterable[str]) -> list[str]:
    """Warnings for the steps (and compensations) naming a system the tenant has not registered."""
    known = set(systems)
    return [
        f"{wf.name}: step {st.id}: no system {a.system!r} is registered yet"
        for p in wf.spec.phases for st in p.steps for a in (st, st.compensate)
        if a is not None and a.system and a.system not in known
    ]  # fmt: skip


def load_workflows(text: str, origin: str = "workflows") -> list[Workflow]:
    """Workflows from YAML, checked (see ``read_workflows``)."""
    return [w for w, _ in read_workflows(text, origin)]
