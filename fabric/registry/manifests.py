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
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from fabric.errors import ConfigError
from fabric.kafka.compacted import publish
from fabric.settings import Settings
from fabric.specs import parse


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


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow")


class Produces(_Entry):
    event_type: StrictStr
    context_type: StrictStr


class Consumes(_Entry):
    context_type: StrictStr
    version: StrictInt | None = Field(None, description="the schema version the consumer reads")


_ID = Field(min_length=1, max_length=200, pattern=r"^[^/]+$", description="unique per tenant; no '/'")


class ProviderSpec(_Entry):
    id: StrictStr = _ID
    owner: StrictStr
    produces: list[Produces] = Field(min_length=1)


class ConsumerSpec(_Entry):
    id: StrictStr = _ID
    owner: StrictStr
    consumes: list[Consumes] = Field(min_length=1)


class _ProviderDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: ProviderSpec


class _ConsumerDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    consumer: ConsumerSpec


def parse_manifest(doc: Any, origin: str = "manifest", tenant: str | None = None) -> Manifest:
    """A provider or consumer manifest (one top-level key); errors name the field."""
    if not isinstance(doc, dict) or len(doc) != 1 or next(iter(doc)) not in ("provider", "consumer"):
        raise ConfigError(f"{origin}: expected one top-level key, 'provider' or 'consumer'")
    kind, spec = next(iter(doc.items()))
    parse(_ProviderDoc if kind == "provider" else _ConsumerDoc, doc, origin)
    return Manifest(kind, spec["id"], spec, tenant)


def load_manifest(path: Path, tenant: str | None = None) -> Manifest:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    return parse_manifest(doc, str(path), tenant)


async def publish_manifest(settings: Settings, m: Manifest) -> None:
    await publish(settings, settings.topic("registry"), [(m.key.encode(), orjson.dumps({m.kind: m.spec}))])
