"""The registry's contents and where they live: the compacted topic ``<prefix>.registry``.

Records (key -> JSON value), everything the fabric versions in one place:
- ``schema:<subject>:<version>`` -> ``{"subject", "version", "id", "schema"}``
- ``config:<subject>`` -> ``{"compatibility": "BACKWARD" | "FORWARD" | "FULL" | "NONE"}``
- ``routing:<version>`` -> ``{"rules": [{"match": "page.*", "context_type": "PageDSL"}, ...]}``
- ``pattern:[<tenant>/]<name>`` -> a CEP pattern (its spec carries its version; the CEP stage follows these)
- ``policy:[<tenant>/]<name>@<version>`` -> an injection policy (routers follow these)
- ``provider:[<tenant>/]<id>``, ``consumer:[<tenant>/]<id>`` -> the manifest
- ``workflow:<tenant>/<name>`` -> a workflow as written (the worker's workflow source runs
  them; routers keep them to list them), ``system:<tenant>/<id>`` -> a target system

Schemas, compatibility and routing are platform objects: one for every tenant, written
by the operator only. Patterns, policies and manifests are tenant objects when their
name starts with ``<tenant>/``: they apply to that tenant alone and shadow the
platform's object of the same name for it (docs/security.md, "Two levels").

Every process that reads or writes events holds a ``SchemaStore`` seeded with the
bundled schemas (each context type's data record is subject ``<ContextType>``
version 1, with the id from ``context-types.yaml``) and follows the topic. A new
version of a context type's subject evolves the process's ``Catalogue``: it is what the
edge validates and the worker encodes from then on, and records written with any
known version are resolved to it. A process that meets an id it does not know reads
the topic to its end before deciding the record is bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from fabric.errors import ConfigError
from fabric.events.catalogue import Catalogue
from fabric.events.codecs import MAGIC
from fabric.kafka.compacted import Follower, read_compacted
from fabric.registry.compat import LEVELS, check_level, zero_size_items
from fabric.registry.manifests import Manifest, parse_manifest
from fabric.settings import Settings

log = logging.getLogger(__name__)
FIRST_ID = 1000  # ids the registry hands out start here; below are the bundled ones
PATTERN = "pattern:"  # + name: a CEP pattern (fabric patterns)
POLICY = "policy:"  # + name@version: an injection policy (fabric policies)
ROUTING = "routing:"  # + version: the event-type -> context-type rules


def split_owner(name: str) -> tuple[str | None, str]:
    """A record's name as (owner, name): ``acme/page-copilot`` -> (``acme``, ``page-copilot``);
    a bare name is the platform's (None)."""
    owner, sep, rest = name.partition("/")
    return (owner, rest) if sep else (None, name)


def canonical(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class SchemaVersion:
    subject: str
    version: int
    id: int
    schema: Any

    def record(self) -> bytes:
        return orjson.dumps({"subject": self.subject, "version": self.version, "id": self.id, "schema": self.schema})


def _owned(held: dict[str, Any], tenant: str) -> dict[str, Any]:
    """The entries of ``tenant/name`` keys that are ``tenant``'s, by name."""
    mine = f"{tenant}/"
    return {full[len(mine) :]: doc for full, doc in held.items() if full.startswith(mine)}


class SchemaStore:
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.subjects: dict[str, dict[int, SchemaVersion]] = {}
        self.by_id: dict[int, SchemaVersion] = {}
        self.config: dict[str, str] = {}
        self.manifests: dict[str, Manifest] = {}
        self.patterns: dict[str, Any] = {}
        #: ``tenant/name`` -> the workflow as written; ``tenant/id`` -> the target system
        self.workflows: dict[str, Any] = {}
        self.systems: dict[str, Any] = {}
        self.routing_version = 0
        self.default_level = "BACKWARD"
        for ct in catalogue.context_types.values():
            self._add(SchemaVersion(ct.name, 1, ct.data_schema_id, catalogue.schemas.data_raw(ct.name)))

    def _add(self, sv: SchemaVersion) -> None:
        self.subjects.setdefault(sv.subject, {})[sv.version] = sv
        self.by_id[sv.id] = sv
        if sv.subject in self.catalogue.context_types and sv.version > 1:
            self.catalogue.evolve(sv.subject, sv.version, sv.id, sv.schema)

    def apply_record(self, key: str, value: bytes | None) -> None:
        kind, _, rest = key.partition(":")
        try:
            if kind == "schema" and value:
                d = orjson.loads(value)
                bomb = zero_size_items(d["schema"])
                if bomb is not None:
                    raise ValueError(f"the items of {bomb} can be written in zero bytes")
                self._add(SchemaVersion(d["subject"], int(d["version"]), int(d["id"]), d["schema"]))
            elif kind == "config":
                if value:
                    self.config[rest] = orjson.loads(value)["compatibility"]
                else:
                    self.config.pop(rest, None)
            elif kind == "routing" and value:
                version = int(rest)
                if version > self.routing_version:
                    self.catalogue.set_rules(orjson.loads(value)["rules"])
                    self.routing_version = version
            elif kind == "pattern":
                if value:
                    self.patterns[rest] = orjson.loads(value)
                else:
                    self.patterns.pop(rest, None)
            elif kind in ("workflow", "system"):
                held = self.workflows if kind == "workflow" else self.systems
                if value:
                    held[rest] = orjson.loads(value)
                else:
                    held.pop(rest, None)
            elif kind in ("provider", "consumer"):
                if value:
                    owner, _ = split_owner(rest)
                    self.manifests[key] = parse_manifest(orjson.loads(value), key, owner)
                else:
                    self.manifests.pop(key, None)
        except (KeyError, ValueError, TypeError, ConfigError) as e:
            log.warning("registry: ignoring record %s: %s", key, e)

    def latest(self, subject: str) -> SchemaVersion | None:
        versions = self.subjects.get(subject)
        return versions[max(versions)] if versions else None

    def level(self, subject: str) -> str:
        return self.config.get(subject, self.default_level)

    def find(self, subject: str, schema: Any) -> SchemaVersion | None:
        text = canonical(schema)
        return next((v for v in self.subjects.get(subject, {}).values() if canonical(v.schema) == text), None)

    def problems(self, subject: str, schema: Any, against: SchemaVersion | None = None) -> list[str]:
        """Why ``schema`` may not become the next version of ``subject`` (empty: it may)."""
        previous = against or self.latest(subject)
        if previous is None:
            return []
        return check_level(self.level(subject), schema, previous.schema)

    def consumer_manifest(self, tenant: str, consumer: str) -> Manifest | None:
        """The consumer manifest of ``consumer`` in ``tenant``: the tenant's own, else the platform's."""
        return self.manifests.get(f"consumer:{tenant}/{consumer}") or self.manifests.get(f"consumer:{consumer}")

    def patterns_of(self, tenant: str) -> dict[str, Any]:
        """name -> spec of the patterns published for ``tenant``: the platform's, shadowed by its own."""
        named = [(split_owner(full), spec) for full, spec in self.patterns.items()]
        out = {name: spec for (owner, name), spec in named if owner is None}
        out.update({name: spec for (owner, name), spec in named if owner == tenant})
        return out

    def workflows_of(self, tenant: str) -> dict[str, Any]:
        """name -> the tenant's workflows as written (workflows are tenant objects only)."""
        return _owned(self.workflows, tenant)

    def systems_of(self, tenant: str) -> dict[str, Any]:
        """id -> the tenant's target systems as registered."""
        return _owned(self.systems, tenant)

    def manifests_of(self, tenant: str) -> list[Manifest]:
        """The manifests a tenant sees: its own and the platform's, never another tenant's."""
        return [m for m in self.manifests.values() if m.tenant in (None, tenant)]

    def consumer_version(self, tenant: str, consumer: str, context_type: str) -> int | None:
        """The schema version a registered consumer declared for a context type, if any."""
        m = self.consumer_manifest(tenant, consumer)
        if m is None:
            return None
        for entry in m.spec.get("consumes", []):
            if entry.get("context_type") == context_type and isinstance(entry.get("version"), int):
                return int(entry["version"])
        return None

    def unknown_ids(self, values: Iterable[bytes | None]) -> bool:
        """Whether any Confluent-framed value names a schema id this process has not seen."""
        reg = self.catalogue
        for v in values:
            if v and len(v) >= 5 and v[0] == MAGIC:
                sid = int.from_bytes(v[1:5], "big")
                if sid not in reg.by_schema_id and sid not in reg.by_data_schema_id and sid != 1:
                    return True
        return False


class RegistryFollower:
    """Keeps a ``SchemaStore`` current: reads the topic at start, then follows it."""

    def __init__(self, settings: Settings, store: SchemaStore) -> None:
        self.settings = settings
        self.store = store
        self.topic = settings.topic("registry")
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._follower = Follower(settings, self.topic, store.apply_record)

    async def start(self) -> None:
        async with self._lock:
            await self._follower.start()
        self._task = asyncio.create_task(self._follower.run(), name="registry-follower")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._follower.stop()

    async def catch_up(self) -> None:
        """Read the topic to its end now (when an unknown schema id shows up)."""
        async with self._lock:
            for key, value in (await read_compacted(self.settings, self.topic)).items():
                self.store.apply_record(key, value)


def valid_level(level: Any) -> str:
    if level not in LEVELS:
        raise ValueError(f"compatibility must be one of {', '.join(LEVELS)}, got {level!r}")
    return str(level)
