"""Schemas: Avro files are the source of truth; JSON Schema and msgspec types are derived.

- ``Schemas.avro(ctype)`` is the parsed fastavro schema of the typed envelope of a
  context type: the generic envelope with ``data`` replaced by that type's record.
- ``Schemas.json_schema(ctype)`` is the JSON-Schema 2020-12 of an event of that type
  as it is posted over HTTP (time as RFC 3339 text, data as an object).
- ``Schemas.data_type(ctype)`` is a msgspec Struct type for fast validation in the worker.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import fastavro
import msgspec

from fabric.errors import ConfigError

ENVELOPE = "fabric.Envelope"
_PRIMITIVE_JSON = {
    "string": {"type": "string"},
    "long": {"type": "integer"},
    "int": {"type": "integer"},
    "double": {"type": "number"},
    "float": {"type": "number"},
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "bytes": {"type": "string"},
}
_PRIMITIVE_PY: dict[str, Any] = {
    "string": str, "long": int, "int": int, "double": float,
    "float": float, "boolean": bool, "null": None, "bytes": bytes,
}  # fmt: skip


def load_avsc(directory: Path) -> dict[str, dict[str, Any]]:
    """Every ``*.avsc`` in a directory, by full name, as plain JSON."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            schema = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from e
        out[f"{schema.get('namespace', '')}.{schema['name']}".lstrip(".")] = schema
    if ENVELOPE not in out:
        raise ConfigError(f"{directory}: {ENVELOPE}.avsc is missing")
    return out


def typed_envelope(envelope: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The envelope schema with ``data`` set to a context type's record."""
    env = copy.deepcopy(envelope)
    env["name"] = f"Envelope_{record['name']}"
    for field in env["fields"]:
        if field["name"] == "data":
            field["type"] = copy.deepcopy(record)
            field.pop("doc", None)
    return env


# ----------------------------------------------------------------- JSON Schema


def avro_to_json_schema(avro: Any, named: dict[str, Any] | None = None) -> dict[str, Any]:
    """Translate an Avro type to JSON-Schema 2020-12 (records closed to unknown fields)."""
    named = {} if named is None else named
    if isinstance(avro, str):
        if avro in _PRIMITIVE_JSON:
            return dict(_PRIMITIVE_JSON[avro])
        if avro in named:
            return copy.deepcopy(named[avro])
        raise ConfigError(f"unknown Avro type {avro!r}")
    if isinstance(avro, list):
        branches = [avro_to_json_schema(b, named) for b in avro]
        simple = [b["type"] for b in branches if set(b) == {"type"} and isinstance(b["type"], str)]
        if len(simple) == len(branches):
            return {"type": simple}
        return {"anyOf": branches}
    kind = avro["type"]
    logical = avro.get("logicalType")
    if logical in ("timestamp-micros", "timestamp-millis"):
        return {"type": "string", "format": "date-time"}
    if kind == "record":
        props: dict[str, Any] = {}
        required = []
        for f in avro["fields"]:
            props[f["name"]] = avro_to_json_schema(f["type"], named)
            if "doc" in f:
                props[f["name"]]["description"] = f["doc"]
            if "default" not in f:
                required.append(f["name"])
        out: dict[str, Any] = {
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": False,
        }
        if "doc" in avro:
            out["description"] = avro["doc"]
        named[avro["name"]] = out
        named[f"{avro.get('namespace', 'fabric')}.{avro['name']}"] = out
        return out
    if kind == "enum":
        out = {"type": "string", "enum": list(avro["symbols"])}
        named[avro["name"]] = out
        return out
    if kind == "array":
        return {"type": "array", "items": avro_to_json_schema(avro["items"], named)}
    if kind == "map":
        return {"type": "object", "additionalProperties": avro_to_json_schema(avro["values"], named)}
    return avro_to_json_schema(kind, named)


def event_json_schema(typed_env: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema of an event as a provider posts it: enrichment fields are optional."""
    schema = avro_to_json_schema(typed_env)
    schema["required"] = [r for r in schema["required"] if r != "time"]
    schema["properties"]["time"] = {"type": "string", "format": "date-time"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:fabric:schema:{typed_env['name']}",
        "title": typed_env["name"],
        **schema,
    }


# --------------------------------------------------------------- msgspec types


def avro_to_msgspec(avro: Any, named: dict[str, Any]) -> Any:
    """Translate an Avro type to a msgspec-decodable Python type (records -> Structs)."""
    if isinstance(avro, str):
        if avro in _PRIMITIVE_PY:
            return _PRIMITIVE_PY[avro]
        return named[avro]
    if isinstance(avro, list):
        types = [avro_to_msgspec(b, named) for b in avro]
        union: Any = types[0]
        for t in types[1:]:
            union = union | t if union is not None else t | None
        return union
    kind = avro["type"]
    if avro.get("logicalType") in ("timestamp-micros", "timestamp-millis"):
        return datetime
    if kind == "record":
        fields: list[Any] = []
        for f in avro["fields"]:
            t = avro_to_msgspec(f["type"], named)
            if "default" in f:
                default = f["default"]
                if isinstance(default, (list, dict)):
                    fields.append((f["name"], t, msgspec.field(default_factory=type(default))))
                else:
                    fields.append((f["name"], t, default))
            else:
                fields.append((f["name"], t))
        fields.sort(key=lambda f: len(f) == 3)  # required fields first
        struct = msgspec.defstruct(avro["name"], fields, forbid_unknown_fields=True, kw_only=True)
        named[avro["name"]] = struct
        return struct
    if kind == "enum":
        lit = Literal[tuple(avro["symbols"])]  # type: ignore[valid-type]
        named[avro["name"]] = lit
        return lit
    if kind == "array":
        return list[avro_to_msgspec(avro["items"], named)]  # type: ignore[misc]
    if kind == "map":
        return dict[str, avro_to_msgspec(avro["values"], named)]  # type: ignore[misc]
    return avro_to_msgspec(kind, named)


class Schemas:
    """Parsed schemas of every context type, loaded once from ``fabric/schemas/avro``."""

    def __init__(self, directory: Path, context_types: dict[str, str]) -> None:
        """``context_types`` maps a context type name to its Avro record's full name."""
        self.directory = directory
        self.raw = load_avsc(directory)
        self.envelope_raw = self.raw[ENVELOPE]
        self.envelope = fastavro.parse_schema(copy.deepcopy(self.envelope_raw))
        self._avro: dict[str, Any] = {}
        self._data_avro: dict[str, Any] = {}
        self._json: dict[str, dict[str, Any]] = {}
        self._types: dict[str, Any] = {}
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        self._raw_data: dict[str, dict[str, Any]] = {}
        for ctype, fullname in context_types.items():
            if fullname not in self.raw:
                raise ConfigError(f"context type {ctype}: schema {fullname}.avsc not found")
            self.evolve(ctype, self.raw[fullname])

    def evolve(self, ctype: str, record: dict[str, Any]) -> None:
        """Make ``record`` the current data schema of ``ctype`` (a new registered version):
        what the edge validates, the worker encodes and readers resolve to."""
        typed = typed_envelope(self.envelope_raw, record)
        self._raw_data[ctype] = copy.deepcopy(record)
        self._avro[ctype] = fastavro.parse_schema(copy.deepcopy(typed))
        self._data_avro[ctype] = fastavro.parse_schema(copy.deepcopy(record))
        self._json[ctype] = event_json_schema(typed)
        self._types[ctype] = avro_to_msgspec(copy.deepcopy(record), {})
        self._decoders[ctype] = msgspec.json.Decoder(self._types[ctype])

    def data_raw(self, ctype: str) -> dict[str, Any]:
        """The current data schema of a context type, as JSON."""
        return self._raw_data[ctype]

    def typed_raw(self, record: dict[str, Any]) -> dict[str, Any]:
        return typed_envelope(self.envelope_raw, record)

    def avro(self, ctype: str) -> Any:
        return self._avro[ctype]

    def data_avro(self, ctype: str) -> Any:
        return self._data_avro[ctype]

    def json_schema(self, ctype: str) -> dict[str, Any]:
        return self._json[ctype]

    def data_type(self, ctype: str) -> Any:
        return self._types[ctype]

    def data_decoder(self, ctype: str) -> msgspec.json.Decoder[Any]:
        return self._decoders[ctype]
