"""MCP reads beside HTTP pulls, in one run: the same 1,000 contexts read through the official
``mcp`` client (``read_resource`` over streamable HTTP) and through ``GET /v1/contexts``,
closed loop with 1 and 8 concurrent readers, auth on. MCP adds JSON-RPC framing, the
SDK's session handling and the Starlette stack; the figures say what that costs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from bench.env import BenchEnv, save
from bench.hist import histogram, record, summary
from fabric.client import subject_path
from fabric.testing import bearer

TENANT = "bench"
SUBJECTS = 1_000


def page(i: int) -> dict[str, Any]:
    return {"id": f"p{i}", "source": "bench://", "type": "page.updated", "subject": f"page-{i}", "tenant": TENANT,
            "sequence": 1, "data": {"app": "bench", "page": f"page-{i}", "title": f"Page {i}",
                                    "components": [{"id": "c1", "kind": "table", "props": {"rows": 25}}]}}  # fmt: skip


async def run(quick: bool = False) -> dict[str, Any]:
    reads = 1_000 if quick else 5_000
    with BenchEnv("mcp") as env:
        s = env.settings
        env.procs.start("worker")
        env.procs.start("router")
        env.procs.wait_ready()
        auth = bearer(s, TENANT, ["context:read:*", "events:write"])
        async with httpx.AsyncClient(base_url=env.procs.url, headers=auth, timeout=30) as http:
            for i in range(0, SUBJECTS, 500):
                r = await http.post("/v1/events", json=[page(j) for j in range(i, i + 500)])
                r.raise_for_status()
            deadline = time.monotonic() + 60
            while len((await http.get("/v1/contexts/PageDSL", params={"limit": 1000})).json()["items"]) < SUBJECTS:
                if time.monotonic() > deadline:
                    raise RuntimeError("pages were not materialized")
                await asyncio.sleep(0.2)
            results: dict[str, Any] = {}
            for readers in (1, 8):
                per = reads // readers

                async def pull_loop(k: int, h: Any, per: int = per) -> None:
                    for n in range(per):
                        t = time.perf_counter()
                        r = await http.get(f"/v1/contexts/PageDSL/{subject_path(f'page-{(k * per + n) % SUBJECTS}')}")
                        record(h, time.perf_counter() - t)
                        assert r.status_code == 200

                async def mcp_loop(k: int, h: Any, per: int = per) -> None:
                    async with (
                        create_mcp_http_client(headers=auth) as mh,
                        Client(streamable_http_client(f"{env.procs.url}/mcp", http_client=mh)) as client,
                    ):
                        for n in range(per):
                            t = time.perf_counter()
                            await client.read_resource(f"ctx://{TENANT}/PageDSL/page-{(k * per + n) % SUBJECTS}")
                            record(h, time.perf_counter() - t)

                for name, loop in (("http pull", pull_loop), ("mcp read_resource", mcp_loop)):
                    h = histogram()
                    started = time.perf_counter()
                    await asyncio.gather(*(loop(k, h) for k in range(readers)))
                    elapsed = time.perf_counter() - started
                    res = {**summary(h), "readers": readers, "reads_per_s": round(per * readers / elapsed)}
                    results[f"{name}, {readers} reader{'s' if readers > 1 else ''}"] = res
                    print(f"  {name:<18} {readers} reader(s): {res['reads_per_s']:>6}/s  p50 {res['p50_ms']} "
                          f"p99 {res['p99_ms']} p999 {res['p999_ms']} ms", flush=True)  # fmt: skip
    result = {"subjects": SUBJECTS, "reads": reads, "summary": results}
    save("mcp", result)
    return result
