"""Provider and consumer manifests (YAML or JSON), validated and stored in the registry topic.

A provider manifest says who produces what::

    provider: {id: crm-sync, owner: sales-eng, endpoint: https://crm.example/api, auth: {type: bearer},
               produces: [{event_type: saas.account.updated, context_type: SaaSRecord, schema: ...}]}

A consumer manifest says what a consumer reads and which schema versions it accepts::

    consumer: {id: page-copilot, owner: copilots, consumes: [{context_type: PageDSL, version: 1}]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from fabric.errors import ConfigError
from fabric.kafka.compacted import publish
from fabric.settings import Settings

REQUIRED = {"provider": ("id", "owner", "produces"), "consumer": ("id", "owner", "consumes")}
ENTRY = {"provider": ("event_type", "context_type"), "consumer": ("context_type",)}


@dataclass(frozen=True)
class Manifest:
    """A manifest of one tenant (``tenant``), or of the platform (None: every tenant's default)."""

    kind: str  # 'provider' | 'consumer'
    id: str
    spec: dict[str, Any]
    tenant: str | None = None

    @property
    def key(self) -> str:
        """``consumer:<tenant>/<id>`` (a tenant's) or ``consumer:<id>`` (the platform's)."""
        return f"{self.kind}:{self.tenant}/{self.id}" if self.tenant else f"{self.kind}:{self.id}"


def parse_manifest(doc: Any, origin: str = "manifest", tenant: str | None = None) -> Manifest:
    if not isinstance(doc, dict) or len(doc) != 1 or next(iter(doc)) not in REQUIRED:
        raise ConfigError(f"{origin}: expected one top-level key, 'provider' or 'consumer'")
    kind, spec = next(iter(doc.items()))
    if not isinstance(spec, dict):
        raise ConfigError(f"{origin}: {kind} must be a mapping")
    for key in REQUIRED[kind]:
        if key not in spec:
            raise ConfigError(f"{origin}: {kind}.{key} is required")
    entries = spec["produces" if kind == "provider" else "consumes"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"{origin}: {kind}.{'produces' if kind == 'provider' else 'consumes'} must be a non-empty list"
        )
    for i, e in enumerate(entries):
        for key in ENTRY[kind]:
            if not isinstance(e, dict) or not isinstance(e.get(key), str):
                raise ConfigError(f"{origin}: {kind} entry [{i}].{key} must be a string")
        if kind == "consumer" and "version" in e and not isinstance(e["version"], int):
            raise ConfigError(f"{origin}: consumer entry [{i}].version must be an integer")
    if not isinstance(spec["id"], str) or not spec["id"] or "/" in spec["id"] or len(spec["id"]) > 200:
        raise ConfigError(f"{origin}: {kind}.id must be a non-empty string of at most 200 characters without '/'")
    return Manifest(kind, spec["id"], spec, tenant)


def load_manifest(path: Path, tenant: str | None = None) -> Manifest:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    return parse_manifest(doc, str(path), tenant)


async def publish_manifest(settings: Settings, m: Manifest) -> None:
    await publish(settings, settings.topic("registry"), [(m.key.encode(), orjson.dumps({m.kind: m.spec}))])
