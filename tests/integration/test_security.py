"""The security gateway with real tokens against the real router: tenant isolation on every
endpoint, scope and sensitivity denials (403, audited), bad tokens (401), JWKS issuers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fabric.client import subject_path
from fabric.security.tokens import mint
from fabric.settings import Settings
from fabric.testing import bearer
from tests.integration.conftest import Fabric, answers, eventually, loopback_http, variant

pytestmark = pytest.mark.integration

TRICKY = ["a/b", "../x", "*", "%2A", "..", "x y", "{other}", "a:b|c"]


def page(tenant: str, subject: str, seq: int = 1, sensitivity: str = "internal") -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex, "source": "lowcode://designer", "type": "page.updated", "subject": subject,
        "tenant": tenant, "sequence": seq, "sensitivity": sensitivity,
        "data": {"app": "crm", "page": subject, "title": f"{tenant}:{subject}", "services": ["svc"]},
    }  # fmt: skip


quoted = subject_path


async def pulled(c: httpx.AsyncClient, headers: dict[str, str], subject: str) -> dict[str, Any] | None:
    r = await c.get(f"/v1/contexts/PageDSL/{quoted(subject)}", headers=headers)
    return r.json() if r.status_code == 200 else None


@pytest.fixture
def tenants() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"ta{tag}", f"tb{tag}"


async def test_a_token_of_one_tenant_never_reaches_another(fabric: Fabric, tenants: tuple[str, str]) -> None:
    a, b = tenants
    s = fabric.settings
    as_a, as_b = bearer(s, a), bearer(s, b)
    async with httpx.AsyncClient(base_url=fabric.url, timeout=15) as c:
        # B subscribes to everything of its own; A to everything of its own
        subs: dict[str, list[dict[str, Any]]] = {a: [], b: []}

        async def watch(tenant: str, ready: asyncio.Event) -> None:
            async with websockets.connect(fabric.ws_url, additional_headers=bearer(s, tenant)) as ws:
                await ws.send(orjson.dumps({"subscribe": ["*"]}).decode())
                await ws.recv()
                ready.set()
                async for m in ws:
                    subs[tenant].append(orjson.loads(m))

        ready = [asyncio.Event(), asyncio.Event()]
        watchers = [asyncio.create_task(watch(t, r)) for t, r in zip((a, b), ready, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 10)
        try:
            # both tenants write the same tricky subjects; B also has one of its own
            for subject in TRICKY:
                assert (await c.post("/v1/events", json=page(a, subject), headers=as_a)).status_code == 202
                assert (await c.post("/v1/events", json=page(b, subject), headers=as_b)).status_code == 202
            assert (await c.post("/v1/events", json=page(b, "b-only"), headers=as_b)).status_code == 202
            # an event claiming another tenant is refused, naming the field
            r = await c.post("/v1/events", json=page(b, "sneaky"), headers=as_a)
            assert r.status_code == 400 and r.json()["rejected"][0]["pointer"] == "/0/tenant"

            for subject in TRICKY:
                body = await eventually(lambda subj=subject: pulled(c, as_a, subj))
                assert body["event"]["tenant"] == a and body["event"]["data"]["title"] == f"{a}:{subject}"
            await eventually(lambda: pulled(c, as_b, "b-only"))
            # B's own subject does not exist for A, however it is spelled
            for path in ["b-only", "../b-only", f"..%2F{b}%2Fb-only", f"%7B{b}%7D:ctx:PageDSL:b-only", "*"]:
                r = await c.get(f"/v1/contexts/PageDSL/{path}", headers=as_a)
                assert r.status_code in (404, 200), r.text
                if r.status_code == 200:
                    assert r.json()["event"]["tenant"] == a
            assert (await c.get("/v1/contexts/PageDSL/b-only", headers=as_a)).status_code == 404
            # listings, composites and assembly stay inside A
            listed = (await c.get("/v1/contexts/PageDSL", params={"limit": 100}, headers=as_a)).json()["items"]
            assert sorted(i["subject"] for i in listed) == sorted(TRICKY)
            assert all(i["event"]["tenant"] == a for i in listed)
            assert (await c.get("/v1/composites", headers=as_a)).json()["items"] == []
            r = await c.post("/v1/assemble", json={"subject": "b-only", "policy": "page-copilot"}, headers=as_a)
            assert r.status_code == 200 and all(not sec["items"] for sec in r.json()["sections"])
            # pushes: each subscriber saw only its own tenant
            await eventually(lambda: len([m for m in subs[b] if "event" in m]) == len(TRICKY) + 1)
            await eventually(lambda: len([m for m in subs[a] if "event" in m]) == len(TRICKY))
            assert {m["event"]["tenant"] for m in subs[a] if "event" in m} == {a}
            assert {m["event"]["tenant"] for m in subs[b] if "event" in m} == {b}
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)


async def test_scopes_and_sensitivity_are_enforced_and_audited(fabric: Fabric, tenant: str) -> None:
    s = fabric.settings
    writer = bearer(s, tenant)
    logs_only = bearer(s, tenant, ["context:read:LogEntry"], sub="narrow-bot")
    no_roles = bearer(s, tenant, ["context:read:*"], sub="plain-bot")
    sre = bearer(s, tenant, ["context:read:*"], roles=["sre"], sub="sre-bot")
    async with httpx.AsyncClient(base_url=fabric.url, timeout=15) as c:
        events = [page(tenant, "open"), page(tenant, "secret", sensitivity="restricted")]
        assert (await c.post("/v1/events", json=events, headers=writer)).status_code == 202
        await eventually(lambda: pulled(c, sre, "secret"))

        # scope: reading another type, listing it, composites, writing
        r = await c.get("/v1/contexts/PageDSL/open", headers=logs_only)
        assert r.status_code == 403 and "context:read:PageDSL" in r.json()["error"]
        assert (await c.get("/v1/contexts/PageDSL", headers=logs_only)).status_code == 403
        assert (await c.get("/v1/composites", headers=logs_only)).status_code == 403
        r = await c.post("/v1/events", json=page(tenant, "x"), headers=logs_only)
        assert r.status_code == 403 and "events:write" in r.json()["error"]
        # sensitivity: restricted needs role sre or security
        r = await c.get("/v1/contexts/PageDSL/secret", headers=no_roles)
        assert r.status_code == 403 and "restricted-needs-sre-or-security" in r.json()["error"]
        assert (await pulled(c, no_roles, "open"))["sensitivity"] == "internal"  # type: ignore[index]
        assert (await pulled(c, sre, "secret"))["sensitivity"] == "restricted"  # type: ignore[index]
        listed = (await c.get("/v1/contexts/PageDSL", headers=no_roles)).json()["items"]
        assert [i["subject"] for i in listed] == ["open"]
        bundle = (
            await c.post("/v1/assemble", json={"subject": "secret", "policy": "page-copilot"}, headers=no_roles)
        ).json()
        assert bundle["sections"][0]["items"] == [] and bundle["sections"][0]["omitted"]["withheld"] == 1
        # a subscriber without the role is not pushed the restricted change; one with it is
        async with (
            websockets.connect(fabric.ws_url, additional_headers=no_roles) as plain,
            websockets.connect(fabric.ws_url, additional_headers=sre) as cleared,
        ):
            for ws in (plain, cleared):
                await ws.send(orjson.dumps({"subscribe": ["page.*"]}).decode())
                await ws.recv()
            later = [page(tenant, "secret", 2, "restricted"), page(tenant, "open", 2)]
            assert (await c.post("/v1/events", json=later, headers=writer)).status_code == 202
            got_plain = [orjson.loads(await asyncio.wait_for(plain.recv(), 10))]
            got_cleared = [orjson.loads(await asyncio.wait_for(cleared.recv(), 10)) for _ in range(2)]
        assert [m["subject"] for m in got_plain] == ["open"]
        assert sorted(m["subject"] for m in got_cleared) == ["open", "secret"]

    # every denial is in the audit trail, with who and why
    def denials() -> list[dict[str, Any]]:
        out = fabric.cli("audit", "--tenant", tenant, "--decision", "deny", "--since", "10m", "--json")
        assert out.returncode == 0, out.stderr
        return [orjson.loads(line) for line in out.stdout.splitlines()]

    rows = await eventually(lambda: len(denials()) >= 5 and denials(), timeout=30, interval=0.5)
    reasons = {(r["subject"], r["action"], r["reason"].split(" ")[0]) for r in rows}
    assert ("narrow-bot", "context.read", "403") in reasons
    assert ("narrow-bot", "events.write", "403") in reasons
    assert ("plain-bot", "context.read", "403") in reasons
    assert all(r["trace_id"] for r in rows)
    allowed = fabric.cli("audit", "--tenant", tenant, "--decision", "allow", "--since", "10m", "--json")
    assert any(orjson.loads(x)["action"] == "context.assemble" for x in allowed.stdout.splitlines())


async def test_a_tenants_security_team_reads_its_own_audit_trail(fabric: Fabric, tenants: tuple[str, str]) -> None:
    a, b = tenants
    s = fabric.settings
    auditor_a = bearer(s, a, ["audit:read"], sub="sec-team")
    async with httpx.AsyncClient(base_url=fabric.url, timeout=15) as c:
        assert (await c.post("/v1/events", json=page(a, "p"), headers=bearer(s, a))).status_code == 202
        narrow = bearer(s, a, ["context:read:LogEntry"], sub="narrow-bot")
        assert (await c.get("/v1/contexts/PageDSL/p", headers=narrow)).status_code == 403
        assert (await c.post("/v1/events", json=page(b, "q"), headers=bearer(s, b, sub="b-writer"))).status_code == 202
        # without the scope: 403; the tenant is always the token's
        assert (await c.get("/v1/audit", headers=bearer(s, a))).status_code == 403

        async def denied() -> list[dict[str, Any]]:
            r = await c.get("/v1/audit", params={"since": "10m", "decision": "deny"}, headers=auditor_a)
            assert r.status_code == 200, r.text
            return list(r.json()["records"])

        rows = await eventually(denied, timeout=30, interval=0.5)
        assert {(r["subject"], r["action"]) for r in rows} >= {("narrow-bot", "context.read")}
        everything = (await c.get("/v1/audit", params={"since": "10m", "limit": 1000}, headers=auditor_a)).json()
        assert everything["records"] and all(r["subject"] != "b-writer" for r in everything["records"])
        b_rows = (await c.get("/v1/audit", params={"since": "10m"}, headers=bearer(s, b, ["audit:read"]))).json()
        assert all(r["subject"] != "narrow-bot" for r in b_rows["records"])  # b never sees a's trail
        bad = await c.get("/v1/audit", params={"since": "yesterday'; DROP"}, headers=auditor_a)
        assert bad.status_code == 400 and "since" in bad.json()["error"]
        report = (await c.get("/v1/audit/report", params={"since": "1h"}, headers=auditor_a)).json()
        assert report["tenant"] == a
        assert {"action": "context.read", "decision": "deny"} in [
            {"action": r["action"], "decision": r["decision"]} for r in report["by_action"]
        ]
        assert any(r["reason"].startswith("403") for r in report["denials_by_reason"])
        assert any(r["subject"] == "narrow-bot" and r["denied"] >= 1 for r in report["top_subjects"])
    out = fabric.cli("audit", "report", "--tenant", a, "--since", "1h", "--json")
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["top_subjects"]


async def test_bad_tokens_are_401(fabric: Fabric, tenant: str) -> None:
    s = fabric.settings
    stranger = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "missing": {},
        "not bearer": {"Authorization": "Basic dXNlcjpwdw=="},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "expired": bearer(s, tenant, ttl_s=-60),
        "wrong key": {"Authorization": f"Bearer {mint(s, tenant, ['context:read:*'], key=stranger)}"},
        "wrong audience": bearer(s, tenant, extra={"aud": "someone-else"}),
        "wrong issuer": bearer(s, tenant, extra={"iss": "https://evil.example"}),
    }
    async with httpx.AsyncClient(base_url=fabric.url, timeout=15) as c:
        for name, headers in cases.items():
            for method, path in [("GET", "/v1/contexts/PageDSL/x"), ("GET", "/v1/contexts/PageDSL"),
                                 ("GET", "/v1/composites"), ("POST", "/v1/events"), ("POST", "/v1/assemble"),
                                 ("GET", "/v1/policies")]:  # fmt: skip
                r = await c.request(method, path, headers=headers, json={})
                assert r.status_code == 401, (name, path, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(fabric.ws_url, additional_headers=cases["expired"])
        assert refused.value.response.status_code == 401


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, Any]]:
    """A loopback issuer publishing one RS256 key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    doc = orjson.dumps({"keys": [{**jwk, "kid": "prod-1", "alg": "RS256", "use": "sig"}]})

    with loopback_http(lambda path: (200, doc)) as url:
        yield f"{url}/jwks.json", key


async def test_router_verifies_tokens_from_a_jwks_issuer(
    fabric: Fabric, jwks_server: tuple[str, Any], tmp_path: Any, tenant: str
) -> None:
    url, key = jwks_server
    settings: Settings = variant(fabric.settings, tmp_path)
    settings = settings.model_copy(
        update={"security": settings.security.model_copy(update={"jwks_url": url, "issuer": "https://idp.test"})}
    )
    fab = Fabric(settings, tmp_path / "logs")
    fab.start("router")  # alone: no worker marks this cache ready, so a missing page is 503, not 404
    try:
        await eventually(lambda: answers(fab.url))
        good = mint(settings, tenant, ["context:read:*"], key=key, algorithm="RS256", kid="prod-1")
        dev = bearer(fabric.settings, tenant)  # the dev issuer is not trusted here
        async with httpx.AsyncClient(base_url=fab.url, timeout=15) as c:
            r = await c.get("/v1/contexts/PageDSL/none", headers={"Authorization": f"Bearer {good}"})
            assert r.status_code in (404, 503), r.text  # authenticated; the page just is not there
            r = await c.get("/v1/contexts/PageDSL/none", headers=dev)
            assert r.status_code == 401
    finally:
        fab.stop()
