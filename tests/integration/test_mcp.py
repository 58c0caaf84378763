"""The router's MCP server, driven by the official ``mcp`` client over streamable HTTP:
discover, list and read resources, call every tool, listen to a resource and be told when
a new event for it flows through Kafka; another tenant's token sees none of it."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from fabric.testing import bearer
from tests.integration.conftest import Fabric, eventually

pytestmark = pytest.mark.integration


def page(tenant: str, subject: str, seq: int) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex, "source": "lowcode://designer", "type": "page.updated", "subject": subject,
        "tenant": tenant, "sequence": seq,
        "data": {"app": "crm", "page": subject, "title": f"{subject} v{seq}", "entities": ["orders"],
                 "services": ["orders-api"]},
    }  # fmt: skip


@asynccontextmanager
async def mcp_client(fabric: Fabric, tenant: str, **kw: Any) -> Any:
    headers = bearer(fabric.settings, tenant, **kw)
    async with create_mcp_http_client(headers=headers) as http:  # the transport leaves a given client open
        async with Client(streamable_http_client(f"{fabric.url}/mcp", http_client=http)) as client:
            yield client


async def test_mcp_resources_tools_and_listen_inside_one_tenant(fabric: Fabric, tenant: str) -> None:
    other = f"ot{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=fabric.url, headers=bearer(fabric.settings, tenant), timeout=15) as http:
        pages = [page(tenant, f"p{i:03d}", 1) for i in range(120)] + [page(tenant, "orders-list", 1)]
        assert (await http.post("/v1/events", json=pages)).status_code == 202

        async def all_there() -> bool:
            r = await http.get("/v1/contexts/PageDSL", params={"limit": 1000})
            return len(r.json()["items"]) == 121

        await eventually(all_there)
        uri = f"ctx://{tenant}/PageDSL/orders-list"

        async with mcp_client(fabric, tenant) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"get_context", "list_contexts", "assemble_context", "query_composites"}
            assert tools["get_context"].input_schema["required"] == ["context_type", "subject"]

            # resources page through the tenant
            first = await client.list_resources()
            assert len(first.resources) == 100 and first.next_cursor
            second = await client.list_resources(cursor=first.next_cursor)
            uris = {str(r.uri) for r in first.resources + second.resources}
            assert len(uris) == 121 and uri in uris and all(u.startswith(f"ctx://{tenant}/") for u in uris)
            templates = (await client.list_resource_templates()).resource_templates
            assert f"ctx://{tenant}/PageDSL/{{subject}}" in {t.uri_template for t in templates}

            read = await client.read_resource(uri)
            body = json.loads(read.contents[0].text)  # type: ignore[union-attr]
            assert body["event"]["data"]["title"] == "orders-list v1" and body["sequence"] == 1
            assert body["as_of"].endswith("Z") and body["stale"] is False

            # every tool
            async def tool(name: str, **args: Any) -> Any:
                result = await client.call_tool(name, args)
                assert not result.is_error, result.content
                return json.loads(result.content[0].text)  # type: ignore[union-attr]

            assert (await tool("get_context", context_type="PageDSL", subject="orders-list"))["sequence"] == 1
            assert len((await tool("list_contexts", context_type="PageDSL", limit=5))["items"]) == 5
            bundle = await tool("assemble_context", subject="orders-list", policy="page-copilot")
            assert bundle["sections"][0]["items"][0]["subject"] == "orders-list"
            assert (await tool("query_composites", since="2020-01-01T00:00:00Z"))["items"] == []
            bad = await client.call_tool("get_context", {"context_type": "PageDSL", "subject": "nope"})
            assert bad.is_error and "no PageDSL context" in bad.content[0].text  # type: ignore[union-attr]

            # listen: a new version through Kafka is announced to this tenant, never to the other
            async with (
                mcp_client(fabric, other) as stranger,
                client.listen(resource_subscriptions=[uri]) as mine,
                stranger.listen(resource_subscriptions=[uri]) as theirs,
            ):
                assert (await http.post("/v1/events", json=page(tenant, "orders-list", 2))).status_code == 202
                event = await asyncio.wait_for(anext(aiter(mine)), 15)
                assert event.uri == uri
                assert json.loads((await client.read_resource(uri)).contents[0].text)["sequence"] == 2  # type: ignore[union-attr]
                with pytest.raises(TimeoutError):  # bounded: the other tenant's stream stays silent
                    await asyncio.wait_for(anext(aiter(theirs)), 2)

                # and the other tenant sees nothing of this one by any other route
                with pytest.raises(MCPError):
                    await stranger.read_resource(uri)
                assert not [r for r in (await stranger.list_resources()).resources if tenant in str(r.uri)]
                got = await stranger.call_tool("get_context", {"context_type": "PageDSL", "subject": "orders-list"})
                assert got.is_error
                listed = await stranger.call_tool("list_contexts", {"context_type": "PageDSL"})
                assert json.loads(listed.content[0].text)["items"] == []  # type: ignore[union-attr]

        # scopes apply: a token for logs only cannot read pages
        async with mcp_client(fabric, tenant, scopes=["context:read:LogEntry"]) as narrow:
            with pytest.raises(MCPError, match="context:read:PageDSL"):
                await narrow.read_resource(uri)

    # without a good token the endpoint answers 401 and says where the metadata is
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(f"{fabric.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401 and "resource_metadata" in r.headers["www-authenticate"]
        meta = (await c.get(f"{fabric.url}/.well-known/oauth-protected-resource/mcp")).json()
        assert meta["resource"].endswith("/mcp") and meta["authorization_servers"]

    # every MCP call is in the audit trail
    def actions() -> set[str]:
        out = fabric.cli("audit", "--tenant", tenant, "--since", "10m", "--json", "--limit", "1000")
        return {json.loads(line)["action"] for line in out.stdout.splitlines()}

    wanted = {"mcp.resources.list", "mcp.resources.read", "mcp.tool.get_context", "mcp.tool.assemble_context",
              "mcp.subscribe"}  # fmt: skip
    await eventually(lambda: wanted <= actions(), timeout=30, interval=0.5)


async def test_mcp_over_stdio_acts_for_its_token(fabric: Fabric, tenant: str) -> None:
    """``fabric mcp --stdio``, as a desktop client would launch it."""
    import sys

    from mcp import StdioServerParameters

    async with httpx.AsyncClient(base_url=fabric.url, headers=bearer(fabric.settings, tenant), timeout=15) as http:
        assert (await http.post("/v1/events", json=page(tenant, "desk", 1))).status_code == 202
        await eventually(lambda: _status(http, "/v1/contexts/PageDSL/desk", 200))
    token = bearer(fabric.settings, tenant)["Authorization"].removeprefix("Bearer ")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "fabric", "mcp", "--stdio"],
        env={**fabric.env(), "FABRIC_MCP_TOKEN": token},
    )  # fmt: skip
    async with Client(params) as client:
        assert {t.name for t in (await client.list_tools()).tools} >= {"get_context", "assemble_context"}
        read = await client.read_resource(f"ctx://{tenant}/PageDSL/desk")
        assert json.loads(read.contents[0].text)["event"]["data"]["title"] == "desk v1"  # type: ignore[union-attr]
        with pytest.raises(MCPError):
            await client.read_resource("ctx://someone-else/PageDSL/desk")


async def _status(http: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await http.get(path)).status_code == status
