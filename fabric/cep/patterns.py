"""The pattern language (YAML), validated on load into compiled patterns.

    patterns:
      - name: deploy-then-error-burst
        version: 1
        key: data.service                  # a dotted path, or a list of them
        allowed_lateness: 30s
        sequence:
          within: 5m
          steps:
            - {name: deploy, where: {type: deploy.finished}}
            - {name: errors, where: {type: log.entry, data.level: ERROR}, at_least: 5}
      - name: missing-heartbeat
        key: subject
        absence:
          first: {type: metric.heartbeat}
          then_not: {type: metric.heartbeat}
          within: 1m
      - name: latency-slo-breach
        key: data.service
        aggregate:
          where: {type: metric.sample, data.name: latency_ms}
          field: data.value
          fn: p95
          window: {kind: sliding, size: 5m}
          when: {$gt: 500}

Durations are ``250ms``, ``30s``, ``5m``, ``2h`` or a number of seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, model_validator

from fabric.conditions import MISSING, ConditionError, Predicate, compile_predicate, getter
from fabric.specs import field_path, load_yaml

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


class PatternError(ConditionError):
    """A pattern is wrong: names the pattern, the field and the problem."""

    def __init__(self, pattern: str, field: str, problem: str) -> None:
        super().__init__(f"pattern {pattern!r}", field, problem)
        self.pattern = pattern


def _condition(spec: Any, pattern: str, field: str) -> Predicate:
    try:
        return compile_predicate(spec, f"pattern {pattern!r}", field)
    except ConditionError as e:
        raise PatternError(pattern, e.field, e.problem) from None


@dataclass(frozen=True)
class Step:
    name: str
    where: Predicate
    min: int  # occurrences needed (0: optional)
    max: float  # occurrences allowed (inf: at_least)


@dataclass(frozen=True)
class Sequence:
    steps: tuple[Step, ...]
    within_ms: int


@dataclass(frozen=True)
class Absence:
    first: Predicate
    then_not: Predicate
    within_ms: int


@dataclass(frozen=True)
class Window:
    kind: Literal["tumbling", "hopping", "sliding", "session"]
    size_ms: int
    slide_ms: int
    gap_ms: int


@dataclass(frozen=True)
class Aggregate:
    where: Predicate
    value: Callable[[Any], Any]
    fn: str
    window: Window
    when: Predicate


@dataclass(frozen=True)
class Pattern:
    name: str
    version: int
    key: Callable[[Mapping[str, Any]], str | None]
    time: Literal["event", "processing"]
    lateness_ms: int
    rule: Sequence | Absence | Aggregate
    max_keys: int = 100_000
    source: dict[str, Any] = field(default_factory=dict, compare=False)
    #: the tenant whose pattern this is (it sees only that tenant's events), or None: the platform's
    owner: str | None = None

    @property
    def kind(self) -> str:
        return type(self.rule).__name__.lower()

    @property
    def run_id(self) -> str:
        """Unique among running patterns: ``<tenant>/<name>`` for a tenant's, the name for the platform's."""
        return f"{self.owner}/{self.name}" if self.owner else self.name


def scoped(p: Pattern, owner: str | None, shadowed_for: frozenset[str] = frozenset()) -> Pattern:
    """``p`` for one tenant only (``owner``), or for every tenant but those whose own pattern
    of the same name shadows it (``shadowed_for``): other events never reach its key."""
    key = p.key
    if owner is not None:

        def own(ev: Mapping[str, Any]) -> str | None:
            return key(ev) if ev.get("tenant") == owner else None

        return replace(p, key=own, owner=owner)
    if not shadowed_for:
        return p

    def others(ev: Mapping[str, Any]) -> str | None:
        return None if ev.get("tenant") in shadowed_for else key(ev)

    return replace(p, key=others)


def _key_fn(spec: Any, pattern: str) -> Callable[[Mapping[str, Any]], str | None]:
    """``tenant|<key paths>``: the tenant always leads, so no match ever mixes tenants."""
    paths = [spec] if isinstance(spec, str) else spec
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise PatternError(pattern, "key", "must be a dotted path or a list of them (tenant, data.service, ...)")
    getters = [getter(p) for p in ["tenant", *(p for p in paths if p != "tenant")]]

    def key(ev: Mapping[str, Any]) -> str | None:
        parts = []
        for g in getters:
            v = g(ev)
            if v is MISSING or v is None:
                return None  # an event without the key takes part in nothing
            parts.append(str(v))
        return "|".join(parts)

    return key


def _duration(allow_zero: bool) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value > 0 or (allow_zero and value == 0):
                return int(value * 1000)
        m = _DURATION.match(value) if isinstance(value, str) else None
        if not m or (float(m.group(1)) <= 0 and not allow_zero):
            raise ValueError(f"not a duration: {value!r} (use 250ms, 30s, 5m, 2h)")
        return int(float(m.group(1)) * _UNIT_MS[m.group(2)])

    return check


#: a duration in milliseconds, written ``250ms``, ``30s``, ``5m``, ``2h`` or as seconds
Duration = Annotated[int, BeforeValidator(_duration(False))]
Lateness = Annotated[int, BeforeValidator(_duration(True))]
Count = Annotated[int, Field(ge=1, strict=True)]
Condition = dict[str, Any] | None


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepSpec(_Spec):
    name: str | None = None
    where: Condition = None
    times: Count | None = None
    at_least: Count | None = None
    optional: StrictBool = False

    @model_validator(mode="after")
    def _one_count(self) -> StepSpec:
        if self.times is not None and self.at_least is not None:
            raise ValueError("use times or at_least, not both")
        return self


class SequenceSpec(_Spec):
    within: Duration
    steps: list[StepSpec] = Field(min_length=1)


class AbsenceSpec(_Spec):
    first: Condition = None
    then_not: Condition = None
    within: Duration


class WindowSpec(_Spec):
    kind: Literal["tumbling", "hopping", "sliding", "session"]
    size: Duration | None = None
    slide: Duration | None = None
    gap: Duration | None = None


class AggregateSpec(_Spec):
    where: Condition = None
    field: str | None = None
    fn: Literal["count", "sum", "avg", "min", "max", "p95"] = "count"
    window: WindowSpec
    when: dict[str, Any]


class PatternSpec(_Spec):
    """One pattern as written (see the module's docstring)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    version: Count = 1
    description: str = ""
    key: str | list[str] = "subject"
    time: Literal["event", "processing"] = "event"
    allowed_lateness: Lateness = 5000
    max_keys: Count = 100_000
    sequence: SequenceSpec | None = None
    absence: AbsenceSpec | None = None
    aggregate: AggregateSpec | None = None


#: what a field's problem is called, by pydantic's error type
_SAY = {
    "extra_forbidden": "unknown field",
    "missing": "is required",
    "too_short": "needs a non-empty list",
    "string_pattern_mismatch": "must be 1-64 of a-z 0-9 _ . - (it becomes composite.<name>)",
    "greater_than_equal": "must be a whole number >= 1",
    "int_type": "must be a whole number >= 1",
    "bool_type": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
}


def _spec_error(e: ValidationError, name: str) -> PatternError:
    err = e.errors()[0]
    kind, where = err["type"], field_path(tuple(err["loc"]))
    if kind == "literal_error":
        problem = f"must be one of {str(err['ctx']['expected']).replace(chr(39), '').replace(' or ', ', ')}"
    elif kind == "value_error":
        problem = str(err["ctx"]["error"])
    else:
        problem = _SAY.get(kind, err["msg"])
    return PatternError(name, where, problem)


def compile_pattern(spec: Any) -> Pattern:
    """A pattern from its spec (a mapping); ``PatternError`` names the pattern, the field and
    the problem. The shape is checked by ``PatternSpec``; what depends on several fields here."""
    if not isinstance(spec, Mapping):
        raise PatternError("?", "", f"a pattern must be a mapping, got {type(spec).__name__}")
    name = str(spec.get("name"))
    if len([k for k in ("sequence", "absence", "aggregate") if k in spec]) != 1:
        raise PatternError(name, "", "needs exactly one of sequence, absence, aggregate")
    try:
        p = PatternSpec.model_validate(spec)
    except ValidationError as e:
        raise _spec_error(e, name) from None
    rule: Sequence | Absence | Aggregate
    if p.sequence is not None:
        steps = []
        for i, st in enumerate(p.sequence.steps):
            low = st.times or st.at_least or 1
            high: float = float("inf") if st.at_least else float(st.times or 1)
            where = _condition(st.where, name, f"sequence.steps[{i}].where")
            steps.append(Step(st.name or f"step{i}", where, 0 if st.optional else low, high))
        if steps[0].min == 0 or steps[-1].min == 0:
            raise PatternError(name, "sequence.steps", "the first and last steps cannot be optional")
        rule = Sequence(tuple(steps), p.sequence.within)
    elif p.absence is not None:
        a = p.absence
        rule = Absence(_condition(a.first, name, "absence.first"), _condition(a.then_not, name, "absence.then_not"),
                       a.within)  # fmt: skip
    else:
        assert p.aggregate is not None
        g, w = p.aggregate, p.aggregate.window
        if g.fn != "count" and g.field is None:
            raise PatternError(name, "aggregate.field", f"{g.fn} needs the dotted path of a numeric field")
        for needed, kinds in (
            ("size", ("tumbling", "hopping", "sliding")),
            ("slide", ("hopping",)),
            ("gap", ("session",)),
        ):
            if w.kind in kinds and getattr(w, needed) is None:
                raise PatternError(name, f"aggregate.window.{needed}", f"a {w.kind} window needs it (e.g. 5m)")
        size = w.size or 0 if w.kind != "session" else 0
        slide = (w.slide or 0) if w.kind == "hopping" else size
        gap = (w.gap or 0) if w.kind == "session" else 0
        if w.kind == "hopping" and slide > size:
            raise PatternError(name, "aggregate.window.slide", "must not be longer than size")
        rule = Aggregate(
            _condition(g.where, name, "aggregate.where"),
            getter(g.field) if g.field is not None else (lambda ev: 1),
            g.fn, Window(w.kind, size, slide, gap),
            _condition({"value": g.when}, name, "aggregate.when"),
        )  # fmt: skip
    return Pattern(name, p.version, _key_fn(p.key, name), p.time, p.allowed_lateness, rule, p.max_keys, dict(spec))


def load_patterns(text: str) -> list[Pattern]:
    """Patterns from YAML: a list, or a mapping with a ``patterns`` list. Names must be unique."""
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as e:
        raise PatternError("?", "", f"not valid YAML: {e}") from None
    items = doc.get("patterns") if isinstance(doc, Mapping) else doc
    if not isinstance(items, list):
        raise PatternError("?", "patterns", "expected a list of patterns")
    out = [compile_pattern(p) for p in items]
    seen: set[str] = set()
    for p in out:
        if p.name in seen:
            raise PatternError(p.name, "name", "defined twice")
        seen.add(p.name)
    return out
