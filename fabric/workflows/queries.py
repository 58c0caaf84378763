"""The SQL behind ``fabric workflows runs | show`` and ``GET /v1/workflows/runs``, built from
checked values only (tenant names, run ids, statuses and bounded numbers)."""

from __future__ import annotations

import re

from fabric.errors import FabricError
from fabric.events.codecs import TENANT
from fabric.security.trail import since_time

RUN_ID = re.compile(r"[0-9a-f]{24}")
WORKFLOW_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
RUN_COLUMNS = "run_id, workflow, version, status, reason, trigger_id, trigger_type, started, ended, phases"
STEP_COLUMNS = "phase, step, system, action, attempt, outcome, error, started, ended, duration_ms"


def _tenant(tenant: str) -> str:
    if not TENANT.fullmatch(tenant):
        raise FabricError(f"invalid tenant {tenant[:70]!r}")
    return tenant


def runs_sql(
    database: str, tenant: str, since: str = "1d", workflow: str | None = None, status: str | None = None,
    limit: int = 100,
) -> str:  # fmt: skip
    t = since_time(since).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    where = f"tenant = '{_tenant(tenant)}' AND started >= toDateTime64('{t}', 3, 'UTC')"
    if workflow is not None:
        if not WORKFLOW_NAME.fullmatch(workflow):
            raise FabricError(f"workflow must be a workflow name, got {workflow[:70]!r}")
        where += f" AND workflow = '{workflow}'"
    if status is not None:
        if status not in ("running", "compensating", "succeeded", "failed"):
            raise FabricError(f"status must be running, compensating, succeeded or failed, got {status[:20]!r}")
        where += f" AND status = '{status}'"
    limit = max(1, min(1000, int(limit)))
    return f"SELECT {RUN_COLUMNS} FROM {database}.workflow_runs FINAL WHERE {where} ORDER BY started DESC LIMIT {limit}"


def run_sql(database: str, tenant: str, run_id: str) -> tuple[str, str]:
    """The run's row and its step attempts, in the order they happened."""
    if not RUN_ID.fullmatch(run_id):
        raise FabricError(f"a run id is 24 hex digits, got {run_id[:40]!r}")
    w = f"tenant = '{_tenant(tenant)}' AND run_id = '{run_id}'"
    return (
        f"SELECT {RUN_COLUMNS} FROM {database}.workflow_runs FINAL WHERE {w}",
        f"SELECT {STEP_COLUMNS} FROM {database}.workflow_steps FINAL WHERE {w} ORDER BY started, attempt, ended",
    )
