"""The workflows and target systems that apply now: the registry topic's
``workflow:<tenant>/<name>`` and ``system:<tenant>/<id>`` records, followed live.

Both are tenant objects only: a workflow sees only its tenant's events and reaches only
its tenant's systems. A record that does not compile (written around the CLI) is logged
and not applied; the CLI checks before it publishes, so this is the second line."""

from __future__ import annotations

import logging
from typing import Any

import mode
import orjson

from fabric.errors import ConfigError
from fabric.kafka.compacted import Follower
from fabric.registry.store import split_owner
from fabric.settings import Settings
from fabric.workflows.spec import Workflow, compile_workflow
from fabric.workflows.systems import SYSTEM, System, parse_system

WORKFLOW = "workflow:"  # registry key prefix: workflow:<tenant>/<name>

log = logging.getLogger(__name__)


class WorkflowSource(mode.Service):
    """Started before the workflow stages, so they start with every workflow applied so far."""

    def __init__(self, settings: Settings, **kw: Any) -> None:
        super().__init__(**kw)
        self.settings = settings
        #: tenant -> name -> (compiled, as written)
        self.workflows: dict[str, dict[str, tuple[Workflow, dict[str, Any]]]] = {}
        self.systems: dict[tuple[str, str], System] = {}
        self.follower = Follower(settings, settings.topic("registry"), self.apply)

    def apply(self, key: str, value: bytes | None) -> None:
        kind = WORKFLOW if key.startswith(WORKFLOW) else SYSTEM if key.startswith(SYSTEM) else None
        if kind is None:
            return
        tenant, name = split_owner(key[len(kind) :])
        if tenant is None:
            log.error("workflows: %s is not a tenant's (workflows and systems are per tenant); ignored", key)
            return
        try:
            if kind == WORKFLOW:
                if value is None:
                    self.workflows.get(tenant, {}).pop(name, None)
                    return
                doc = orjson.loads(value)
                wf = compile_workflow(doc)
                if wf.name != name:
                    raise ConfigError(f"the record names {name!r} but the workflow {wf.name!r}")
                self.workflows.setdefault(tenant, {})[name] = (wf, doc)
            else:
                if value is None:
                    self.systems.pop((tenant, name), None)
                    return
                system = parse_system(orjson.loads(value), tenant, key)
                self.systems[tenant, system.id] = system
        except (ConfigError, orjson.JSONDecodeError) as e:
            log.error("workflows: %s not applied: %s", key, e)

    def of(self, tenant: str) -> list[tuple[Workflow, dict[str, Any]]]:
        return list(self.workflows.get(tenant, {}).values())

    def system(self, tenant: str, system_id: str) -> System | None:
        return self.systems.get((tenant, system_id))

    async def on_start(self) -> None:
        await self.follower.start()

    async def on_started(self) -> None:
        self.add_future(self.follower.run(lambda: self.should_stop))

    async def on_stop(self) -> None:
        await self.follower.stop()
