"""``fabric systems discover ID``: what an MCP target offers, and whether the tenant's
workflows call it correctly.

The tools come from the system itself (``tools/list`` with the official client, the same
auth and allowed hosts as the worker's calls). Each workflow step or compensation that
calls a tool of the system is checked against the tool's input schema: the tool exists,
every required argument is given, no argument the schema does not allow, and arguments
written as plain values (not templates, whose values are known only at run time) have the
schema's type. Problems name the workflow, the step and the argument.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema

from fabric.errors import BackendUnavailable
from fabric.workflows.spec import TEMPLATE, ActionSpec, Workflow
from fabric.workflows.systems import Reach, System, secret


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]


async def list_tools(system: System, reach: Reach, timeout_s: float = 10.0) -> list[Tool]:
    """The tools an MCP system lists (BackendUnavailable naming why it could not be asked)."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    reach.check(system.spec.endpoint)
    a = system.spec.auth
    headers = {"Authorization": f"Bearer {secret(system.tenant, a.secret)}"} if a.type == "bearer" and a.secret else {}
    try:
        async with asyncio.timeout(timeout_s):
            async with create_mcp_http_client(headers=headers) as http:
                async with Client(streamable_http_client(system.spec.endpoint, http_client=http)) as client:
                    listed = await client.list_tools()
    except TimeoutError:
        raise BackendUnavailable(f"{system.id} did not list its tools within {timeout_s:g} s") from None
    except (httpx.HTTPError, OSError) as e:
        raise BackendUnavailable(f"{system.id} unreachable: {type(e).__name__}: {e}") from None
    except BaseExceptionGroup as eg:  # the SDK's task groups wrap transport errors
        first = eg.exceptions[0] if eg.exceptions else eg
        raise BackendUnavailable(f"{system.id} unreachable: {type(first).__name__}: {first}") from None
    return [Tool(t.name, t.description or "", dict(t.input_schema or {})) for t in listed.tools]


def _calls(wf: Workflow, system_id: str) -> list[tuple[str, ActionSpec]]:
    out: list[tuple[str, ActionSpec]] = []
    for phase in wf.spec.phases:
        for step in phase.steps:
            if step.mcp is not None and step.system == system_id:
                out.append((f"step {step.id}", step))
            c = step.compensate
            if c is not None and c.mcp is not None and c.system == system_id:
                out.append((f"step {step.id} compensation", c))
    return out


def _templated(value: Any) -> bool:
    if isinstance(value, str):
        return bool(TEMPLATE.search(value))
    if isinstance(value, dict):
        return any(_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(_templated(v) for v in value)
    return False


def check_steps(workflows: list[Workflow], system_id: str, tools: list[Tool]) -> list[str]:
    """What is wrong with the workflows' calls of ``system_id``'s tools ([] when nothing)."""
    by_name = {t.name: t for t in tools}
    problems = []
    for wf in workflows:
        for where, action in _calls(wf, system_id):
            assert action.mcp is not None
            at = f"workflow {wf.name!r}, {where}"
            tool = by_name.get(action.mcp.tool)
            if tool is None:
                problems.append(f"{at}: {system_id} has no tool {action.mcp.tool!r} "
                                f"(it has {', '.join(sorted(by_name)) or 'none'})")  # fmt: skip
                continue
            schema = tool.input_schema
            props: dict[str, Any] = schema.get("properties", {}) or {}
            args = action.mcp.arguments
            for name in schema.get("required", []) or []:
                if name not in args:
                    problems.append(f"{at}: tool {tool.name} needs argument {name!r}")
            for name, value in args.items():
                if name not in props:
                    if schema.get("additionalProperties", True) is False or props:
                        problems.append(f"{at}: tool {tool.name} takes no argument {name!r} "
                                        f"(it takes {', '.join(sorted(props)) or 'none'})")  # fmt: skip
                    continue
                if _templated(value):
                    continue  # known when the run renders it
                try:
                    jsonschema.validate(value, props[name])
                except jsonschema.ValidationError as e:
                    problems.append(f"{at}: argument {name!r} of tool {tool.name}: {e.message}")
                except jsonschema.SchemaError:
                    pass  # the tool's own schema is broken: nothing to check against
    return problems
