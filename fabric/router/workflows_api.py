"""A tenant's workflows over HTTP (what ``fabric workflows`` does), for the console and scripts;
the tenant is always the token's.

- ``GET /v1/workflows`` (``workflows:read``): the tenant's workflows as written, each with
  its version, triggers and phases;
- ``POST /v1/workflows`` with ``{"yaml": "..."}`` (``registry:write``): every workflow of
  the file is checked, then published; a bad one is a 422 naming the workflow, the field and
  the problem, and nothing of the file is published; a changed workflow under a version
  already applied is a 409; steps naming a system not registered yet come back as warnings;
- ``DELETE /v1/workflows/NAME`` (``registry:write``): runs in progress finish.

The YAML is parsed off the event loop, at most ``bodies.YAML_BYTES``, and without YAML aliases.

``GET /v1/workflows/runs`` and ``GET /v1/workflows/runs/{run_id}``: a tenant's workflow
runs and one run's step attempts, from ClickHouse (scope ``workflows:read``).

``/v1/workflows/runs?since=1d&workflow=order-processing&status=failed&limit=100`` ->
``{"runs": [...]}``, newest first; ``/v1/workflows/runs/RUN`` -> ``{"run": {...}, "steps":
[...]}`` (404 for a run of another tenant, as for one that does not exist). 503 while the
store cannot be read.
"""

from __future__ import annotations

import asyncio

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response

from fabric.errors import ConfigError, FabricError
from fabric.router import bodies
from fabric.router.audit_api import store_rows
from fabric.router.problems import HTTPProblem
from fabric.router.registry_api import _store, _writer
from fabric.router.state import caller, state_of
from fabric.workflows.queries import WORKFLOW_NAME, run_sql, runs_sql
from fabric.workflows.source import WORKFLOW
from fabric.workflows.spec import WorkflowError, read_workflows, unregistered_systems, version_conflict

_enc = msgspec.json.Encoder()


def _json(body: object, status: int = 200) -> Response:
    return Response(_enc.encode(body), status_code=status, media_type="application/json")


async def list_workflows(request: Request) -> Response:
    st = state_of(request)
    who, trace = await caller(request, "workflows.read", "workflows")
    st.gate.require(who, "workflows:read", "workflows.read", "workflows", trace)
    out = [
        {"name": name, "version": doc.get("version", 1), "enabled": doc.get("enabled", True),
         "triggers": [t.get("event", "?") for t in doc.get("triggers", []) if isinstance(t, dict)],
         "phases": [p.get("id", "?") for p in doc.get("phases", []) if isinstance(p, dict)], "spec": doc}
        for name, doc in sorted(st.schemas.store.workflows_of(who.tenant).items())
    ]  # fmt: skip
    return _json({"workflows": out})


async def apply_workflows(request: Request) -> Response:
    st, who, trace = await _writer(request)
    text = await bodies.read_yaml(request, "workflows")
    try:
        checked = await asyncio.to_thread(read_workflows, text, "workflows")
    except WorkflowError as e:
        return _json({"error": str(e), "workflow": e.workflow, "field": e.field, "problem": e.problem}, 422)
    except ConfigError as e:
        return _json({"error": str(e), "workflow": "", "field": "", "problem": str(e)}, 422)
    store = st.schemas.store
    applied, systems = store.workflows_of(who.tenant), store.systems_of(who.tenant)
    for wf, doc in checked:
        conflict = version_conflict(applied.get(wf.name), wf, doc)
        if conflict:
            return _json({"error": conflict, "workflow": wf.name, "field": "version", "problem": conflict}, 409)
    warnings = [w for wf, _ in checked for w in unregistered_systems(wf, systems)]
    for wf, doc in checked:
        key = f"{WORKFLOW}{who.tenant}/{wf.name}"
        await _store(st, key, orjson.dumps(doc))
        st.gate.record_allowed(who, "registry.write", key, trace, f"v{wf.spec.version}")
    return _json({"applied": [f"{wf.name}@{wf.spec.version}" for wf, _ in checked], "warnings": warnings}, 201)


async def remove_workflow(request: Request) -> Response:
    st, who, trace = await _writer(request)
    name = request.path_params["name"]
    if not WORKFLOW_NAME.fullmatch(name) or name not in st.schemas.store.workflows_of(who.tenant):
        raise HTTPProblem(404, f"the tenant has no workflow {name[:100]!r}")
    key = f"{WORKFLOW}{who.tenant}/{name}"
    await _store(st, key, None)
    st.gate.record_allowed(who, "registry.write", key, trace)
    return _json({"removed": name})


async def workflow_runs(request: Request) -> Response:
    st = state_of(request)
    who, trace = await caller(request, "workflows.read", "workflows/runs")
    st.gate.require(who, "workflows:read", "workflows.read", "workflows/runs", trace)
    q = request.query_params
    try:
        sql = runs_sql(st.settings.clickhouse.database, who.tenant, q.get("since", "1d"), q.get("workflow"),
                       q.get("status"), int(q.get("limit", "100")))  # fmt: skip
    except ValueError:
        raise HTTPProblem(400, "limit must be a number") from None
    except FabricError as e:
        raise HTTPProblem(400, str(e)) from None
    runs = await store_rows(request, sql, "the workflow store")
    st.gate.record_allowed(who, "workflows.read", "workflows/runs", trace, f"{len(runs)} runs")
    return Response(_enc.encode({"runs": runs}), media_type="application/json")


async def workflow_run(request: Request) -> Response:
    st = state_of(request)
    run_id = request.path_params["run_id"]
    who, trace = await caller(request, "workflows.read", f"workflows/runs/{run_id[:40]}")
    st.gate.require(who, "workflows:read", "workflows.read", f"workflows/runs/{run_id[:40]}", trace)
    try:
        run_q, steps_q = run_sql(st.settings.clickhouse.database, who.tenant, run_id)
    except FabricError as e:
        raise HTTPProblem(400, str(e)) from None
    runs = await store_rows(request, run_q, "the workflow store")
    if not runs:
        raise HTTPProblem(404, f"no workflow run {run_id} for tenant {who.tenant}")
    steps = await store_rows(request, steps_q, "the workflow store")
    st.gate.record_allowed(who, "workflows.read", f"workflows/runs/{run_id}", trace)
    return Response(_enc.encode({"run": runs[0], "steps": steps}), media_type="application/json")
