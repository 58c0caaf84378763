"""``GET /v1/workflows/runs`` and ``GET /v1/workflows/runs/{run_id}``: a tenant's workflow
runs and one run's step attempts, from ClickHouse (scope ``workflows:read``; the tenant is
the token's).

``/v1/workflows/runs?since=1d&workflow=order-processing&status=failed&limit=100`` ->
``{"runs": [...]}``, newest first; ``/v1/workflows/runs/RUN`` -> ``{"run": {...}, "steps":
[...]}`` (404 for a run of another tenant, as for one that does not exist). 503 while the
store cannot be read.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from fabric.errors import FabricError
from fabric.router.audit_api import store_rows
from fabric.router.problems import HTTPProblem
from fabric.router.state import caller, state_of
from fabric.workflows.queries import run_sql, runs_sql

_enc = msgspec.json.Encoder()


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
