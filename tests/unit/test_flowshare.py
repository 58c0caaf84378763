"""The live flows' sharing of trail queries and their cap (fabric.router.flowshare)."""

from __future__ import annotations

from typing import Any

from fabric.router.flowshare import MAX_STREAMS, FlowShare


async def test_one_query_per_tenant_per_interval_and_a_cap_on_streams() -> None:
    share, asked = FlowShare(), []

    async def query(tenant: str) -> dict[str, Any]:
        asked.append(tenant)
        return {"tenant": tenant}

    assert all(share.opened("acme") for _ in range(MAX_STREAMS))
    assert share.full("acme") and not share.opened("acme") and share.opened("globex")
    got = [await share.of("acme", lambda: query("acme")) for _ in range(5)]
    assert got == [{"tenant": "acme"}] * 5 and asked == ["acme"]  # five viewers, one query
    await share.of("globex", lambda: query("globex"))
    assert asked == ["acme", "globex"]
    for _ in range(MAX_STREAMS):
        share.closed("acme")
    assert share.open == {"globex": 1} and not share.full("acme")
    await share.of("acme", lambda: query("acme"))  # nothing kept for a tenant nobody watches
    assert asked == ["acme", "globex", "acme"]
