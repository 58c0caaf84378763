"""Declarative conditions: MongoDB-style operators on dotted paths, compiled once into closures.
Shared by CEP patterns, injection policies and access rules.

    {"type": "log.entry", "data.level": {"$in": ["ERROR", "FATAL"]}}
    {"$or": [{"data.value": {"$gt": 500}}, {"data.labels.route": {"$regex": "^/pay"}}]}

Operators: ``$eq $ne $in $nin $gt $gte $lt $lte $regex $exists``, ``$and $or $not``.
A plain value means ``$eq``; several keys in one mapping must all hold. A missing
field compares unequal and fails ordering comparisons (as in MongoDB); comparing
values of different types is False, never an error. No ``eval``: every condition is
a tree of small functions built when the pattern, policy or rule is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from fabric.errors import ConfigError

Predicate = Callable[[Mapping[str, Any]], bool]
MISSING: Any = object()


class ConditionError(ConfigError):
    """A condition is wrong: names whose it is (``owner``: "pattern 'x'", "policy 'y'"),
    the field and the problem."""

    def __init__(self, owner: str, field: str, problem: str) -> None:
        super().__init__(f"{owner}, {field or 'top level'}: {problem}")
        self.owner = owner
        self.field = field
        self.problem = problem


def getter(path: str) -> Callable[[Any], Any]:
    """A function reading a dotted path (``data.labels.route``, ``data.items.0``)."""
    parts = path.split(".")

    def get(obj: Any) -> Any:
        for p in parts:
            if type(obj) is dict or isinstance(obj, Mapping):
                obj = obj.get(p, MISSING)
            elif isinstance(obj, list) and p.isdigit() and int(p) < len(obj):
                obj = obj[int(p)]
            else:
                return MISSING
            if obj is MISSING:
                return MISSING
        return obj

    # the common shapes, without the loop (conditions run once per event per pattern)
    if len(parts) == 1:
        name = parts[0]

        def get_one(obj: Any) -> Any:
            return obj.get(name, MISSING) if type(obj) is dict else get(obj)

        return get_one
    if len(parts) == 2:
        outer, inner = parts

        def get_two(obj: Any) -> Any:
            if type(obj) is dict:
                mid = obj.get(outer, MISSING)
                if type(mid) is dict:
                    return mid.get(inner, MISSING)
            return get(obj)

        return get_two
    return get


def _ordered(op: str, bound: Any) -> Callable[[Any], bool]:
    def compare(v: Any) -> bool:
        if v is MISSING or v is None or isinstance(v, bool) != isinstance(bound, bool):
            return False
        try:
            if op == "$gt":
                return bool(v > bound)
            if op == "$gte":
                return bool(v >= bound)
            if op == "$lt":
                return bool(v < bound)
            return bool(v <= bound)
        except TypeError:
            return False

    return compare


ValueTest = Callable[[Any], bool]


def _eq(a: Any) -> ValueTest:
    return lambda v: v is not MISSING and bool(v == a)


def _ne(a: Any) -> ValueTest:
    return lambda v: v is MISSING or bool(v != a)


def _memo(test: ValueTest) -> ValueTest:
    """Remember the answer per string value: event types, levels and names repeat endlessly."""
    cache: dict[str, bool] = {}

    def memo(v: Any) -> bool:
        if type(v) is str:
            hit = cache.get(v)
            if hit is None:
                hit = test(v)
                if len(cache) < 4096:
                    cache[v] = hit
            return hit
        return test(v)

    return memo


def _in(members: list[Any], inside: bool) -> ValueTest:
    if inside:
        return _memo(lambda v: v is not MISSING and v in members)
    return _memo(lambda v: v is MISSING or v not in members)


def _regex(rx: re.Pattern[str]) -> ValueTest:
    return _memo(lambda v: isinstance(v, str) and rx.search(v) is not None)


def _exists(want: bool) -> ValueTest:
    return lambda v: (v is not MISSING) == want


def _negate(test: ValueTest) -> ValueTest:
    return lambda v: not test(v)


def _all_values(tests: list[ValueTest]) -> ValueTest:
    return lambda v: all(t(v) for t in tests)


def _value_test(spec: Any, owner: str, field: str) -> ValueTest:
    """A test on one field's value: an operator mapping, or a plain value (equality)."""
    if not (isinstance(spec, Mapping) and spec and all(str(k).startswith("$") for k in spec)):
        return _eq(spec)
    tests: list[ValueTest] = []
    for op, arg in spec.items():
        where = f"{field}.{op}"
        if op == "$eq":
            tests.append(_eq(arg))
        elif op == "$ne":
            tests.append(_ne(arg))
        elif op in ("$in", "$nin"):
            if not isinstance(arg, list):
                raise ConditionError(owner, where, f"{op} needs a list, got {type(arg).__name__}")
            tests.append(_in(list(arg), op == "$in"))
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            if not isinstance(arg, (int, float, str)) or isinstance(arg, bool):
                raise ConditionError(owner, where, f"{op} needs a number or a string, got {arg!r}")
            tests.append(_ordered(op, arg))
        elif op == "$regex":
            try:
                rx = re.compile(arg)
            except (re.error, TypeError) as e:
                raise ConditionError(owner, where, f"not a valid regular expression: {e}") from None
            tests.append(_regex(rx))
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise ConditionError(owner, where, "$exists needs true or false")
            tests.append(_exists(arg))
        elif op == "$not":
            tests.append(_negate(_value_test(arg, owner, where)))
        else:
            raise ConditionError(owner, where, f"unknown operator {op}")
    return tests[0] if len(tests) == 1 else _all_values(tests)


def _field(get: Callable[[Any], Any], test: ValueTest) -> Predicate:
    return lambda ev: test(get(ev))


def _all(preds: list[Predicate]) -> Predicate:
    if len(preds) == 2:
        a, b = preds
        return lambda ev: a(ev) and b(ev)
    return lambda ev: all(p(ev) for p in preds)


def _any(preds: list[Predicate]) -> Predicate:
    if len(preds) == 2:
        a, b = preds
        return lambda ev: a(ev) or b(ev)
    return lambda ev: any(p(ev) for p in preds)


def _not(pred: Predicate) -> Predicate:
    return lambda ev: not pred(ev)


def compile_predicate(spec: Any, owner: str = "condition", field: str = "where") -> Predicate:
    """Compile a condition mapping into a function of an event (a dict)."""
    if spec is None or spec == {}:
        return lambda ev: True
    if not isinstance(spec, Mapping):
        raise ConditionError(owner, field, f"a condition must be a mapping, got {type(spec).__name__}")
    parts: list[Predicate] = []
    for key, arg in spec.items():
        where = f"{field}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(arg, list) or not arg:
                raise ConditionError(owner, where, f"{key} needs a non-empty list of conditions")
            subs = [compile_predicate(a, owner, f"{where}[{i}]") for i, a in enumerate(arg)]
            parts.append(_all(subs) if key == "$and" else _any(subs))
        elif key == "$not":
            parts.append(_not(compile_predicate(arg, owner, where)))
        elif isinstance(key, str) and key.startswith("$"):
            raise ConditionError(owner, where, f"unknown operator {key} (field names cannot start with $)")
        else:
            parts.append(_field(getter(str(key)), _value_test(arg, owner, where)))
    return parts[0] if len(parts) == 1 else _all(parts)


def values_required(spec: Any, path: str) -> frozenset[Any] | None:
    """The values ``path`` must have for the condition ``spec`` to hold, or None when it
    does not pin them down (a cheap index: CEP offers an event only to the patterns whose
    conditions can accept its ``type``)."""
    if not isinstance(spec, Mapping) or not spec:
        return None
    pinned: list[frozenset[Any]] = []
    for key, arg in spec.items():
        found: frozenset[Any] | None = None
        if key == path:
            if not isinstance(arg, Mapping) and isinstance(arg, (str, int, float)):
                found = frozenset([arg])
            elif isinstance(arg, Mapping) and set(arg) == {"$eq"} and isinstance(arg["$eq"], (str, int, float)):
                found = frozenset([arg["$eq"]])
            elif isinstance(arg, Mapping) and set(arg) == {"$in"} and isinstance(arg["$in"], list):
                found = frozenset(v for v in arg["$in"] if isinstance(v, (str, int, float)))
        elif key in ("$and", "$or") and isinstance(arg, list) and arg:
            subs = [values_required(s, path) for s in arg]
            if key == "$and":
                known = [s for s in subs if s is not None]
                found = frozenset.intersection(*known) if known else None
            elif all(s is not None for s in subs):
                found = frozenset().union(*(s for s in subs if s is not None))
        if found is not None:
            pinned.append(found)
    return frozenset.intersection(*pinned) if pinned else None
