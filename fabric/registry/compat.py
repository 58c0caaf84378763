"""Avro schema compatibility, by the Avro specification's schema-resolution rules.

``problems(reader, writer)`` lists why data written with ``writer`` cannot be read with
``reader``, each naming the field (``.owner: has no default and the old schema lacks
it``). The levels are Confluent's: BACKWARD (the new schema reads data written with
the previous one), FORWARD (the previous schema reads data written with the new
one), FULL (both), NONE.
"""

from __future__ import annotations

from typing import Any

LEVELS = ("BACKWARD", "FORWARD", "FULL", "NONE")
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
PROMOTIONS = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}  # fmt: skip  (writer, reader)


def _named(schema: Any, ns: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every named type in a schema, by short and full name."""
    out = {} if out is None else out
    if isinstance(schema, list):
        for s in schema:
            _named(s, ns, out)
    elif isinstance(schema, dict):
        t = schema.get("type")
        if t in ("record", "enum", "fixed", "error"):
            space = schema.get("namespace", ns)
            name = schema["name"]
            full = name if "." in name else (f"{space}.{name}" if space else name)
            out[full] = out[name.rsplit(".", 1)[-1]] = schema
            for f in schema.get("fields", []):
                _named(f["type"], space, out)
        elif t == "array":
            _named(schema["items"], ns, out)
        elif t == "map":
            _named(schema["values"], ns, out)
        elif isinstance(t, dict | list):
            _named(t, ns, out)
    return out


def _kind(s: Any) -> str:
    if isinstance(s, list):
        return "union"
    if isinstance(s, dict):
        t = s["type"]
        return _kind(t) if isinstance(t, dict | list) else str(t)
    return str(s)


def _short(s: dict[str, Any]) -> str:
    return str(s.get("name", "")).rsplit(".", 1)[-1]


class _Checker:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.rn = _named(reader)
        self.wn = _named(writer)
        self.seen: set[tuple[int, int]] = set()

    def deref(self, s: Any, named: dict[str, Any]) -> Any:
        while isinstance(s, str) and s not in PRIMITIVES:
            s = named.get(s, s) if s in named else s
            if isinstance(s, str):
                break
        if isinstance(s, dict) and isinstance(s.get("type"), str) and s["type"] in PRIMITIVES and len(s) == 1:
            return s["type"]
        return s

    def check(self, r: Any, w: Any, path: str) -> list[str]:
        r, w = self.deref(r, self.rn), self.deref(w, self.wn)
        rk, wk = _kind(r), _kind(w)
        if wk == "union":
            out = []
            for branch in w:
                out += self.check(r, branch, path)
            return out
        if rk == "union":
            for branch in r:
                if not self.check(branch, w, path):
                    return []
            return [f"{path or '.'}: the reader's union has no branch for the writer's {wk}"]
        if rk != wk:
            if (wk, rk) in PROMOTIONS:
                return []
            return [f"{path or '.'}: type changed from {wk} to {rk}"]
        if rk in PRIMITIVES:
            return []
        key = (id(r), id(w))
        if key in self.seen:  # recursive types
            return []
        self.seen.add(key)
        if rk == "record":
            return self.record(r, w, path)
        if rk == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and "default" not in r:
                return [f"{path or '.'}: enum symbol(s) {', '.join(missing)} unknown to the reader"]
            return []
        if rk == "array":
            return self.check(r["items"], w["items"], f"{path}[]")
        if rk == "map":
            return self.check(r["values"], w["values"], f"{path}{{}}")
        if rk == "fixed":
            if r.get("size") != w.get("size"):
                return [f"{path or '.'}: fixed size changed from {w.get('size')} to {r.get('size')}"]
            return []
        return []

    def record(self, r: dict[str, Any], w: dict[str, Any], path: str) -> list[str]:
        if _short(r) != _short(w) and _short(w) not in r.get("aliases", []):
            return [f"{path or '.'}: record name changed from {_short(w)} to {_short(r)}"]
        wfields = {f["name"]: f for f in w.get("fields", [])}
        out = []
        for f in r.get("fields", []):
            match = wfields.get(f["name"]) or next(
                (wfields[a] for a in f.get("aliases", []) if a in wfields), None
            )  # fmt: skip
            where = f"{path}.{f['name']}"
            if match is None:
                if "default" not in f:
                    out.append(f"{where}: has no default and data written with the other schema lacks it")
                continue
            out += self.check(f["type"], match["type"], where)
        return out


def problems(reader: Any, writer: Any) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can)."""
    return _Checker(reader, writer).check(reader, writer, "")


def check_level(level: str, new: Any, previous: Any) -> list[str]:
    """Problems of ``new`` against ``previous`` under a compatibility level."""
    if level == "NONE":
        return []
    out = []
    if level in ("BACKWARD", "FULL"):
        out += [f"backward: {p}" for p in problems(new, previous)]
    if level in ("FORWARD", "FULL"):
        out += [f"forward: {p}" for p in problems(previous, new)]
    return out


def zero_size_items(schema: Any) -> str | None:
    """The path of an array or map whose items can be written in zero bytes, if any.

    An Avro array is a count followed by its items; when an item takes no bytes (``null``,
    an empty record, a record of nulls, ``fixed`` of size 0) a record of a few bytes can
    declare billions of items and expand into gigabytes when decoded. With every item
    taking at least one byte, a record holds at most as many items as it has bytes, so
    the event size limit bounds what it decodes into. Such schemas are refused."""
    named: dict[str, Any] = {}

    def zero(s: Any, seen: frozenset[str]) -> bool:
        if isinstance(s, str):
            if s == "null":
                return True
            if s in named and s not in seen:
                return zero(named[s], seen | {s})
            return False
        if isinstance(s, list):  # a union writes its branch index: at least one byte
            return False
        if isinstance(s, dict):
            t = s.get("type")
            if t == "record" or t == "error":
                return all(zero(f.get("type"), seen) for f in s.get("fields", []) if isinstance(f, dict))
            if t == "fixed":
                return s.get("size") == 0
            if isinstance(t, str | dict | list) and t not in ("array", "map", "enum"):
                return zero(t, seen)
        return False

    def walk(s: Any, path: str) -> str | None:
        if isinstance(s, list):
            for i, branch in enumerate(s):
                found = walk(branch, f"{path}[{i}]")
                if found:
                    return found
            return None
        if not isinstance(s, dict):
            return None
        t = s.get("type")
        if isinstance(s.get("name"), str) and t in ("record", "error", "fixed", "enum"):
            named[s["name"]] = s
            named[s["name"].rsplit(".", 1)[-1]] = s
        if t in ("record", "error"):
            for f in s.get("fields", []):
                if isinstance(f, dict):
                    found = walk(f.get("type"), f"{path}.{f.get('name')}")
                    if found:
                        return found
            return None
        if t in ("array", "map"):
            items = s.get("items" if t == "array" else "values")
            if zero(items, frozenset()):
                return path or "."
            return walk(items, f"{path}[]")
        if isinstance(t, dict | list):
            return walk(t, path)
        return None

    return walk(schema, "")
