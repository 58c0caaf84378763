"""The first catalogue: context types and the event-type -> context-type mapping, from files.

``fabric/schemas/registry/context-types.yaml`` declares each context type (kind, typed topic,
Avro schema, Confluent schema id); ``fabric/schemas/registry/event-types.yaml`` maps event
type globs (``page.*``) to context types, first match wins.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fastavro
import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel

from fabric.errors import ConfigError, UnknownEventType
from fabric.events.schemas import Schemas
from fabric.specs import parse

Kind = Literal["state", "stream"]
GENERIC_SCHEMA_ID = 1
#: the typed-envelope id of a registered data schema version is this plus the version's id
TYPED_ID_OFFSET = 1_000_000


@dataclass(frozen=True, slots=True)
class ContextType:
    name: str
    kind: Kind
    topic: str
    schema: str
    schema_id: int
    data_schema_id: int
    ttl_s: float = 0.0  # context older than this is flagged stale; 0: never


@dataclass(frozen=True, slots=True)
class Rule:
    match: str
    context_type: str


class ContextTypeSpec(BaseModel):
    """One entry of ``context-types.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: Kind
    topic: str = Field(min_length=1, description="the typed topic, without the prefix")
    schema_: str = Field(alias="schema", min_length=1, description="the Avro record's full name")
    schema_id: int = Field(ge=1)
    data_schema_id: int = Field(ge=1)
    ttl_s: float = Field(0.0, ge=0, description="older contexts are flagged stale; 0: never")


class ContextTypeSpecs(RootModel[dict[str, ContextTypeSpec]]):
    pass


class RuleSpec(BaseModel):
    """One entry of ``event-types.yaml``: event types matching the glob go to the context type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(min_length=1)
    context_type: str = Field(min_length=1)


class RuleSpecs(RootModel[list[RuleSpec]]):
    pass


class Catalogue:
    """Context types, routing rules and their schemas. Lookups are cached per event type."""

    def __init__(self, context_types: list[ContextType], rules: list[Rule], schemas: Schemas):
        self.context_types = {c.name: c for c in context_types}
        self.rules: list[Rule] = []
        self.schemas = schemas
        self.by_schema_id = {c.schema_id: c for c in context_types}
        self.by_data_schema_id = {c.data_schema_id: c for c in context_types}
        # Schema evolution (fabric/registry): every version's writer schema by its id, and
        # the id and version each context type is currently encoded with.
        self.typed_id = {c.name: c.schema_id for c in context_types}
        self.version = {c.name: 1 for c in context_types}
        self.typed_writers: dict[int, Any] = {c.schema_id: schemas.avro(c.name) for c in context_types}
        self.data_writers: dict[int, Any] = {c.data_schema_id: schemas.data_avro(c.name) for c in context_types}
        self.data_versions: dict[str, dict[int, Any]] = {c.name: {1: schemas.data_avro(c.name)} for c in context_types}
        self._cache: dict[str, ContextType | None] = {}
        self.set_rules(rules)

    def set_rules(self, rules: list[Rule] | list[dict[str, Any]]) -> None:
        """Replace the event-type rules (a new routing version from the catalogue)."""
        parsed = [r if isinstance(r, Rule) else Rule(str(r["match"]), str(r["context_type"])) for r in rules]
        for r in parsed:
            if r.context_type not in self.context_types:
                raise ConfigError(f"event-type rule {r.match!r}: unknown context type {r.context_type!r}")
        self.rules = parsed
        self._cache = {}

    @classmethod
    def load(cls, schemas_dir: Path) -> Catalogue:
        reg_dir = schemas_dir / "registry"
        path = reg_dir / "context-types.yaml"
        doc = _read_yaml(path)
        if isinstance(doc, dict):  # the friendlier message for the one choice people get wrong
            for name, spec in doc.items():
                kind = spec.get("kind") if isinstance(spec, dict) else None
                if kind is not None and kind not in ("state", "stream"):
                    raise ConfigError(f"context type {name}: kind must be state or stream, got {kind!r}")
        ctypes = parse(ContextTypeSpecs, doc, str(path)).root
        rules = parse(RuleSpecs, _read_yaml(reg_dir / "event-types.yaml"), str(reg_dir / "event-types.yaml")).root
        cts = [ContextType(name, c.kind, c.topic, c.schema_, c.schema_id, c.data_schema_id, c.ttl_s)
               for name, c in ctypes.items()]  # fmt: skip
        schemas = Schemas(schemas_dir / "avro", {c.name: c.schema for c in cts})
        return cls(cts, [Rule(r.match, r.context_type) for r in rules], schemas)

    def resolve(self, event_type: str) -> ContextType:
        """The context type of an event type; ``UnknownEventType`` when no rule matches."""
        try:
            ct = self._cache[event_type]
        except KeyError:
            ct = next(
                (self.context_types[r.context_type] for r in self.rules if fnmatch.fnmatchcase(event_type, r.match)),
                None,
            )
            if len(self._cache) < 10_000:
                self._cache[event_type] = ct
        if ct is None:
            raise UnknownEventType(f"no registry rule maps event type {event_type!r}", "/type")
        return ct

    def evolve(self, name: str, version: int, data_id: int, record: dict[str, Any]) -> None:
        """A registered version of a context type's data schema: its writers become known and,
        when it is the newest, it becomes the schema events are validated and encoded with."""
        ct = self.context_types[name]
        typed_id = TYPED_ID_OFFSET + data_id
        self.by_schema_id[typed_id] = ct
        self.by_data_schema_id[data_id] = ct
        self.typed_writers[typed_id] = fastavro.parse_schema(copy.deepcopy(self.schemas.typed_raw(record)))
        self.data_writers[data_id] = fastavro.parse_schema(copy.deepcopy(record))
        self.data_versions[name][version] = self.data_writers[data_id]
        if version > self.version[name]:
            self.version[name] = version
            self.typed_id[name] = typed_id
            self.schemas.evolve(name, record)

    def __getitem__(self, name: str) -> ContextType:
        return self.context_types[name]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"registry file {path} is missing") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
