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
from typing import Any, Literal

import yaml

from fabric.conditions import MISSING, ConditionError, Predicate, compile_predicate, getter

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}
AGGREGATES = ("count", "sum", "avg", "min", "max", "p95")
WINDOWS = ("tumbling", "hopping", "sliding", "session")


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


def duration_ms(value: Any, pattern: str, where: str, allow_zero: bool = False) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (value > 0 or (allow_zero and value == 0)):
        return int(value * 1000)
    m = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not m or (float(m.group(1)) <= 0 and not allow_zero):
        raise PatternError(pattern, where, f"not a duration: {value!r} (use 250ms, 30s, 5m, 2h)")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


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


def _count(step: Mapping[str, Any], pattern: str, where: str) -> tuple[int, float]:
    times, at_least, optional = step.get("times"), step.get("at_least"), step.get("optional", False)
    if times is not None and at_least is not None:
        raise PatternError(pattern, where, "use times or at_least, not both")
    for name, n in (("times", times), ("at_least", at_least)):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise PatternError(pattern, f"{where}.{name}", f"must be a whole number >= 1, got {n!r}")
    if not isinstance(optional, bool):
        raise PatternError(pattern, f"{where}.optional", "must be true or false")
    low = times or at_least or 1
    high: float = float("inf") if at_least else float(times or 1)
    return (0 if optional else low), high


def _known(spec: Mapping[str, Any], allowed: set[str], pattern: str, where: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise PatternError(pattern, f"{where}.{unknown[0]}" if where else unknown[0],
                           f"unknown field (expected one of: {', '.join(sorted(allowed))})")  # fmt: skip


def compile_pattern(spec: Any) -> Pattern:
    if not isinstance(spec, Mapping):
        raise PatternError("?", "", f"a pattern must be a mapping, got {type(spec).__name__}")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", name):
        raise PatternError(str(name), "name", "must be 1-64 of a-z 0-9 _ . - (it becomes composite.<name>)")
    _known(spec, {"name", "version", "key", "time", "allowed_lateness", "max_keys", "sequence", "absence",
                  "aggregate", "description"}, name, "")  # fmt: skip
    version = spec.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PatternError(name, "version", "must be a whole number >= 1")
    time = spec.get("time", "event")
    if time not in ("event", "processing"):
        raise PatternError(name, "time", "must be event or processing")
    lateness = duration_ms(spec.get("allowed_lateness", "5s"), name, "allowed_lateness", allow_zero=True)
    kinds = [k for k in ("sequence", "absence", "aggregate") if k in spec]
    if len(kinds) != 1:
        raise PatternError(name, "", "needs exactly one of sequence, absence, aggregate")
    body = spec[kinds[0]]
    if not isinstance(body, Mapping):
        raise PatternError(name, kinds[0], "must be a mapping")
    rule: Sequence | Absence | Aggregate
    if kinds[0] == "sequence":
        _known(body, {"within", "steps"}, name, "sequence")
        steps_spec = body.get("steps")
        if not isinstance(steps_spec, list) or not steps_spec:
            raise PatternError(name, "sequence.steps", "needs a non-empty list of steps")
        steps = []
        for i, st in enumerate(steps_spec):
            where = f"sequence.steps[{i}]"
            if not isinstance(st, Mapping):
                raise PatternError(name, where, "a step must be a mapping")
            _known(st, {"name", "where", "times", "at_least", "optional"}, name, where)
            low, high = _count(st, name, where)
            steps.append(
                Step(
                    str(st.get("name", f"step{i}")),
                    _condition(st.get("where"), name, f"{where}.where"),
                    low,
                    high,
                )
            )
        if steps[0].min == 0 or steps[-1].min == 0:
            raise PatternError(name, "sequence.steps", "the first and last steps cannot be optional")
        rule = Sequence(tuple(steps), duration_ms(body.get("within"), name, "sequence.within"))
    elif kinds[0] == "absence":
        _known(body, {"first", "then_not", "within"}, name, "absence")
        rule = Absence(
            _condition(body.get("first"), name, "absence.first"),
            _condition(body.get("then_not"), name, "absence.then_not"),
            duration_ms(body.get("within"), name, "absence.within"),
        )
    else:
        _known(body, {"where", "field", "fn", "window", "when"}, name, "aggregate")
        fn = body.get("fn", "count")
        if fn not in AGGREGATES:
            raise PatternError(name, "aggregate.fn", f"must be one of {', '.join(AGGREGATES)}, got {fn!r}")
        path = body.get("field")
        if fn != "count" and not isinstance(path, str):
            raise PatternError(name, "aggregate.field", f"{fn} needs the dotted path of a numeric field")
        w = body.get("window")
        if not isinstance(w, Mapping) or w.get("kind") not in WINDOWS:
            raise PatternError(name, "aggregate.window.kind", f"must be one of {', '.join(WINDOWS)}")
        _known(w, {"kind", "size", "slide", "gap"}, name, "aggregate.window")
        kind = w["kind"]
        size = duration_ms(w.get("size"), name, "aggregate.window.size") if kind != "session" else 0
        slide = duration_ms(w.get("slide"), name, "aggregate.window.slide") if kind == "hopping" else size
        gap = duration_ms(w.get("gap"), name, "aggregate.window.gap") if kind == "session" else 0
        if kind == "hopping" and slide > size:
            raise PatternError(name, "aggregate.window.slide", "must not be longer than size")
        when = body.get("when")
        if not isinstance(when, Mapping):
            raise PatternError(name, "aggregate.when", "needs a condition on the value, e.g. {$gt: 500}")
        rule = Aggregate(
            _condition(body.get("where"), name, "aggregate.where"),
            getter(path) if isinstance(path, str) else (lambda ev: 1),
            fn, Window(kind, size, slide, gap),
            _condition({"value": when}, name, "aggregate.when"),
        )  # fmt: skip
    max_keys = spec.get("max_keys", 100_000)
    if not isinstance(max_keys, int) or max_keys < 1:
        raise PatternError(name, "max_keys", "must be a whole number >= 1")
    return Pattern(name, version, _key_fn(spec.get("key", "subject"), name), time, lateness, rule, max_keys, dict(spec))


def load_patterns(text: str) -> list[Pattern]:
    """Patterns from YAML: a list, or a mapping with a ``patterns`` list. Names must be unique."""
    try:
        doc = yaml.safe_load(text)
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
