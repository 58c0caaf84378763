"""Target systems: where a workflow's steps go, registered per tenant in the registry topic.

    system:
      id: crm
      kind: http                    # http (a JSON API) | mcp (an MCP server, streamable HTTP)
      endpoint: http://127.0.0.1:9001
      auth: {type: bearer, secret: crm-token}   # none | bearer
      signing_secret: crm-hmac      # HTTP bodies are HMAC-SHA256 signed with it (optional)
      security_level: internal      # the most sensitive context it may receive
      sla: {timeout: 5s}            # a step's timeout when the step gives none
      max_in_flight: 16             # calls to it at once, from one worker (a bulkhead)

Secrets are never in the registry. A secret named ``crm-token`` of tenant ``acme`` is
the worker's environment variable ``FABRIC_SECRET__ACME__CRM_TOKEN``: a tenant can only
name its own secrets, never another tenant's or the fabric's own settings.

Endpoints are checked against ``workflows.allowed_hosts`` (the operator's list; empty:
none) and never reach the fabric's own Kafka, Redis, ClickHouse or router ports, so a
tenant cannot point a workflow at the fabric's internals.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from fabric.cep.patterns import Duration
from fabric.errors import ConfigError
from fabric.events.envelope import LEVEL
from fabric.specs import parse

SYSTEM = "system:"  # registry key prefix: system:<tenant>/<id>
NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthSpec(_Spec):
    type: Literal["none", "bearer"] = "none"
    secret: str | None = Field(None, pattern=NAME)


class SlaSpec(_Spec):
    timeout: Duration = 30_000


class SystemSpec(_Spec):
    id: str = Field(pattern=NAME)
    kind: Literal["http", "mcp"] = "http"
    endpoint: str = Field(pattern=r"^https?://", max_length=2000)
    auth: AuthSpec = AuthSpec()
    signing_secret: str | None = Field(None, pattern=NAME)
    security_level: Literal["public", "internal", "confidential", "restricted"] = "internal"
    sla: SlaSpec = SlaSpec()
    #: a burst of runs queues for the system instead of flooding it (its listen queue
    #: overflowing turns into resets that fail steps); waiting for a turn is not
    #: counted against a step's timeout
    max_in_flight: int = Field(16, ge=1, le=1000)
    description: str = ""


class _Doc(_Spec):
    system: SystemSpec


@dataclass(frozen=True)
class System:
    tenant: str
    spec: SystemSpec

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def level(self) -> int:
        return LEVEL[self.spec.security_level]

    @property
    def key(self) -> str:
        return f"{SYSTEM}{self.tenant}/{self.spec.id}"


def parse_system(doc: Any, tenant: str, origin: str = "system") -> System:
    """A system manifest (``{system: {...}}``); errors name the field."""
    return System(tenant, parse(_Doc, doc, origin).system)


def secret(tenant: str, name: str, environ: dict[str, str] | None = None) -> str:
    """The tenant's secret ``name`` from ``FABRIC_SECRET__<TENANT>__<NAME>``."""
    var = "FABRIC_SECRET__" + re.sub(r"[^A-Z0-9]", "_", tenant.upper()) + "__" + re.sub(r"[^A-Z0-9]", "_", name.upper())
    value = (environ if environ is not None else os.environ).get(var)
    if not value:
        raise ConfigError(f"secret {name!r} of tenant {tenant!r} is not set (the worker's {var})")
    return value


@dataclass(frozen=True)
class Reach:
    """Which endpoints systems may have: the operator's allowed hosts, minus the fabric's own."""

    allowed: tuple[str, ...]
    #: (host, port) pairs the fabric itself listens on or uses
    own: frozenset[tuple[str, int]]

    def check(self, endpoint: str) -> None:
        u = urlparse(endpoint)
        host = (u.hostname or "").lower()
        port = u.port or (443 if u.scheme == "https" else 80)
        if not host:
            raise ConfigError(f"endpoint {endpoint[:100]!r} names no host")
        if not any(_host_matches(host, a) for a in self.allowed):
            raise ConfigError(
                f"endpoint host {host!r} is not in workflows.allowed_hosts "
                f"({', '.join(self.allowed) or 'empty: no system can be reached'})"
            )
        if (host, port) in self.own or (_loopback(host) and any(_loopback(h) and p == port for h, p in self.own)):
            raise ConfigError(f"endpoint {host}:{port} is one of the fabric's own services")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_matches(host: str, allowed: str) -> bool:
    allowed = allowed.lower()
    if "/" in allowed:
        try:
            return ipaddress.ip_address(host) in ipaddress.ip_network(allowed, strict=False)
        except ValueError:
            return False
    if allowed.startswith("*."):
        return host.endswith(allowed[1:])
    return host == allowed
