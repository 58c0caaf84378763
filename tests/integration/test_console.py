"""The web console in a real browser (Debian's Chromium, driven by Playwright) against the
shared real stack: sign in, an event posted over HTTP shows up and its context opens,
a policy edit changes the preview and publishing changes what ``/v1/assemble`` returns,
a token without ``admin`` cannot publish, and another tenant sees none of it.
Screenshots of each view go to docs/console/."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fabric.testing import EVERYTHING, bearer
from tests.integration.conftest import Fabric, eventually

pytestmark = pytest.mark.integration
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def signed_in(browser: Any, fab: Fabric, token_header: dict[str, str]) -> Any:
    page = await browser.new_page(viewport={"width": 1366, "height": 800})
    await page.goto(f"{fab.url}/console")
    await page.get_by_label("Bearer token").fill(token_header["Authorization"].removeprefix("Bearer "))
    await page.get_by_role("button", name="Sign in").click()
    return page


def log(t: datetime, etype: str = "log.entry", level: str = "ERROR") -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "source": "svc://orders-api", "type": etype, "subject": "orders-api",
            "time": t.isoformat(), "data": {"service": "orders-api", "level": level, "message": f"{etype} at {t}"}}  # fmt: skip


def page_event(subject: str, title: str) -> dict[str, Any]:
    return {"id": f"p-{uuid.uuid4().hex[:8]}", "source": "designer://console-test", "type": "page.updated",
            "subject": subject, "data": {"app": "desk", "page": subject, "title": title, "route": f"/{subject}",
                                         "entities": ["orders"], "components": []}}  # fmt: skip


def metric(subject: str, value: float) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "source": "prom://console-test", "type": "metric.sampled", "subject": subject,
            "data": {"name": "queue_depth", "value": value, "service": "orders-api"}}  # fmt: skip


WORKFLOW = """
name: page-announce
version: 1
triggers: [{event: page.updated, where: {subject: wf-page}}]
phases:
  - id: announce
    type: sequential
    steps:
      - id: tell
        event: {type: saas.order.confirmed, subject: "{{ trigger.subject }}",
                data: {system: desk, object: page, record_id: "{{ trigger.subject }}"}}
"""


async def test_console_signs_in_shows_contexts_and_publishes_a_policy(
    fabric: Fabric, tenant: str, http: httpx.AsyncClient, browser: Any, tmp_path: Path
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    admin = bearer(fabric.settings, tenant, [*EVERYTHING, "admin", "audit:read", "workflows:read"])
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    applied = fabric.cli("workflows", "apply", str(tmp_path / "wf.yaml"), "--tenant", tenant)
    assert applied.returncode == 0, applied.stderr

    # a bad token is refused at sign-in, with the reason
    page = await signed_in(browser, fabric, {"Authorization": "Bearer not-a-token"})
    await page.locator("#signin-error").wait_for()
    assert "401" in await page.locator("#signin-error").inner_text()
    await page.close()

    page = await signed_in(browser, fabric, admin)
    await page.locator("#tenant").wait_for()
    assert await page.locator("#tenant").inner_text() == tenant

    # a deploy then a burst of errors: the composite fires while the rest of the test runs
    t0 = datetime.now(UTC)
    burst = [log(t0, "deploy.finished", "INFO"), *(log(t0 + timedelta(seconds=1 + i)) for i in range(5)),
             log(t0 + timedelta(seconds=12), level="INFO")]  # fmt: skip
    assert (await http.post("/v1/events", json=burst)).status_code == 202

    # the live flow: the posted events show up by type, with their rate
    await page.get_by_role("button", name="Flow", exact=True).click()
    await page.locator("#flow-types tr.flow-type", has_text="log.entry").wait_for(timeout=30_000)
    assert await page.locator("#flow-types svg.spark").count() >= 1
    await page.screenshot(path=str(SHOTS / "flow.png"))
    await page.get_by_role("button", name="Contexts").click()

    # an event posted over HTTP appears, and its context opens
    assert (await http.post("/v1/events", json=page_event("orders-desk", "Orders desk"))).status_code == 202
    await page.get_by_label("Context type").select_option("PageDSL")
    link = page.locator('a[data-subject="orders-desk"]')
    await link.wait_for(timeout=15_000)
    await link.click()
    detail = page.locator("#context-detail")
    await detail.wait_for()
    text = await detail.inner_text()
    assert "PageDSL / orders-desk" in text and "Orders desk" in text and "designer://console-test" in text

    # a subject opened by name
    await page.get_by_role("button", name="Contexts").click()
    await page.get_by_label("Subject", exact=True).fill("orders-desk")
    await page.get_by_role("button", name="Open", exact=True).click()
    await page.locator("#context-detail h3", has_text="PageDSL / orders-desk").wait_for()

    # its version history, from the raw trail in ClickHouse: a second version joins the first
    second = page_event("orders-desk", "Orders desk, with filters")
    assert (await http.post("/v1/events", json=second)).status_code == 202

    async def two_versions() -> bool:
        await link.click()
        await page.locator("#history-loading").wait_for(state="detached")
        return await page.locator("#context-history tr.version").count() == 2

    await eventually(two_versions, 30, interval=1)
    history = await page.locator("#context-history").inner_text()
    assert history.index("Orders desk, with filters") < history.index('"Orders desk"')  # newest first
    await page.screenshot(path=str(SHOTS / "contexts.png"), full_page=True)

    # a stream type's window, drawn: a metric's values
    samples = [metric("queue-depth", v) for v in (3, 5, 4, 9, 7)]
    assert (await http.post("/v1/events", json=samples)).status_code == 202
    await page.get_by_label("Context type").select_option("Metric")
    sample_link = page.locator('a[data-subject="queue-depth"]')
    await sample_link.wait_for(timeout=15_000)

    async def charted() -> bool:
        await sample_link.click()
        await page.locator("#window-chart").wait_for()
        return "5 values" in (await page.locator("#window-chart svg").get_attribute("aria-label") or "")

    await eventually(charted, 15, interval=1)
    assert "min 3, max 9, last 7" in await page.locator("#window-chart").inner_text()
    await page.screenshot(path=str(SHOTS / "streams.png"), full_page=True)

    # a policy: preview it, narrow it to one section, see the preview change, publish it
    await page.get_by_role("button", name="Policies").click()
    await page.get_by_label("Policy", exact=True).select_option("page-copilot")
    await page.get_by_label("Subject to preview").fill("orders-desk")
    await eventually(lambda: page.locator("#policy-text").input_value(), 10)
    await page.get_by_role("button", name="Preview").click()
    await page.locator("#preview tr.section").first.wait_for()
    assert await page.locator("#preview tr.section").count() == 5
    policy = json.loads(await page.locator("#policy-text").input_value())
    policy["sections"] = policy["sections"][:1]
    await page.locator("#policy-text").fill(json.dumps(policy, indent=2))
    await page.get_by_role("button", name="Preview").click()
    await eventually(lambda: _count(page, "#preview tr.section", 1), 10)
    assert "orders-desk" in await page.locator("#preview tr.section").inner_text()
    await page.screenshot(path=str(SHOTS / "policies.png"))
    await page.get_by_role("button", name="Publish as a new version").click()
    await page.locator("#policy-ok").wait_for()
    assert "published page-copilot" in await page.locator("#policy-ok").inner_text()

    async def narrowed() -> bool:
        r = await http.post("/v1/assemble", json={"subject": "orders-desk", "policy": "page-copilot"})
        return r.status_code == 200 and [s["context_type"] for s in r.json()["sections"]] == ["PageDSL"]

    await eventually(narrowed, 15)

    # a second version with a smaller budget, and the two compared
    policy["budget_tokens"] = 1200
    await page.locator("#policy-text").fill(json.dumps(policy, indent=2))
    await page.get_by_role("button", name="Publish as a new version").click()
    await eventually(lambda: _has(page.locator("#policy-ok"), "version 2"), 10)
    await page.get_by_label("From", exact=True).select_option("1")
    await page.get_by_label("To", exact=True).select_option("2")
    await page.get_by_role("button", name="Compare").click()
    await page.locator("#policy-diff").wait_for()
    assert [t.split() for t in await page.locator("#policy-diff .removed").all_inner_texts()] == [
        ["-", '"budget_tokens":', "3000,"]
    ]
    assert [t.split() for t in await page.locator("#policy-diff .added").all_inner_texts()] == [
        ["+", '"budget_tokens":', "1200,"]
    ]
    await page.screenshot(path=str(SHOTS / "policies.png"), full_page=True)

    # the composite in the live feed, with its contributing events
    await page.get_by_role("button", name="Composites").click()
    row = page.locator("tr.composite", has_text="composite.deploy-then-error-burst")
    await row.first.wait_for(timeout=30_000)
    assert "deploy-then-error-burst/orders-api" in await row.first.inner_text()
    shown = (await row.first.inner_text()).split()
    assert {e["id"] for e in burst[:6]} <= set(shown), shown
    # a contributing event opens the context it belongs to
    contributor = row.first.locator(f'a[data-event="{burst[1]["id"]}"]')
    await contributor.wait_for(timeout=30_000)
    await page.screenshot(path=str(SHOTS / "composites.png"))
    await contributor.click()
    await page.locator("#context-detail h3", has_text="LogEntry / orders-api").wait_for()
    assert await page.get_by_label("Context type").input_value() == "LogEntry"

    # a workflow run and its step timeline
    assert (await http.post("/v1/events", json=page_event("wf-page", "Announced"))).status_code == 202
    await page.get_by_role("button", name="Workflows").click()
    run = page.locator("tr.run", has_text="page-announce")
    await run.first.wait_for(timeout=60_000)
    await eventually(lambda: _has(run.first, "succeeded"), 60)
    await run.first.locator("a").click()
    await page.locator("#timeline tr.step", has_text="tell").wait_for()
    assert "succeeded" in await page.locator("#timeline tr.step").first.inner_text()
    await page.screenshot(path=str(SHOTS / "workflows.png"))

    # workflows applied from the console: a bad one shows its error at the field, a good one is listed
    editor = page.get_by_label("Apply workflows (YAML)")
    await editor.fill(
        WORKFLOW.replace("name: page-announce", "name: page-echo").replace("type: sequential", "type: serial")
    )
    await page.get_by_role("button", name="Apply", exact=True).click()
    await page.locator("#workflow-error-field").wait_for()
    assert await page.locator("#workflow-error-field").inner_text() == "phases[0].type"
    assert "(line 7)" in await page.locator("#workflow-error").inner_text()
    await page.screenshot(path=str(SHOTS / "workflows-apply.png"), full_page=True)
    await editor.fill(WORKFLOW.replace("name: page-announce", "name: page-echo"))
    await page.get_by_role("button", name="Apply", exact=True).click()
    await page.locator("#workflow-ok").wait_for()
    await page.locator("tr.workflow", has_text="page-echo").wait_for()
    assert "page-echo" in (await http.get("/v1/workflows", headers=admin)).text
    await page.get_by_role("button", name="Remove page-echo").click()
    await eventually(lambda: _count(page, "tr.workflow >> text=page-echo", 0), 10)

    # patterns: a bad one shows its error at the field, a good one is applied and listed
    await page.get_by_role("button", name="Patterns").click()
    editor = page.get_by_label("Apply patterns (YAML)")
    good = await editor.input_value()
    await editor.fill(good.replace("size: 1m", "size: soon"))
    await page.get_by_role("button", name="Apply", exact=True).click()
    await page.locator("#pattern-error-field").wait_for()
    assert await page.locator("#pattern-error-field").inner_text() == "aggregate.window.size"
    assert "(line 8)" in await page.locator("#pattern-error").inner_text()
    assert await editor.get_attribute("aria-invalid") == "true"
    await page.screenshot(path=str(SHOTS / "patterns.png"))
    await editor.fill(good)
    await page.get_by_role("button", name="Apply", exact=True).click()
    await page.locator("#pattern-ok").wait_for()
    await page.locator("tr.pattern", has_text="checkout-errors").wait_for()
    listed = await http.get("/v1/patterns")
    assert [p["owner"] for p in listed.json()["patterns"] if p["name"] == "checkout-errors"] == ["tenant"]

    # the tenant's audit trail, filtered
    await page.get_by_role("button", name="Audit").click()
    await page.get_by_label("Action").fill("context.read")
    await page.get_by_label("Action").press("Enter")

    async def filtered() -> list[str] | None:
        actions = await page.locator("table[aria-label='Audit records'] tbody tr td:nth-child(3)").all_inner_texts()
        return actions if actions and set(actions) == {"context.read"} else None

    await eventually(filtered, 30)
    await page.screenshot(path=str(SHOTS / "audit.png"))
    await page.close()

    # a token without admin reads the policy but cannot publish it
    reader = await signed_in(browser, fabric, bearer(fabric.settings, tenant))
    await reader.get_by_role("button", name="Policies").click()
    await eventually(lambda: reader.locator("#policy-text").input_value(), 10)
    await reader.get_by_role("button", name="Publish as a new version").click()
    await reader.locator("#policy-error").wait_for()
    assert "403" in await reader.locator("#policy-error").inner_text()
    await reader.close()

    # another tenant sees none of the first tenant's data
    theirs_all = bearer(fabric.settings, f"other{tenant}", [*EVERYTHING, "audit:read"])
    other = await signed_in(browser, fabric, theirs_all)
    await other.locator("#tenant").wait_for()
    async with httpx.AsyncClient(base_url=fabric.url, timeout=10) as c:  # its own page: the list has loaded
        assert (
            await c.post("/v1/events", json=page_event("other-desk", "Theirs"), headers=theirs_all)
        ).status_code == 202
    await other.get_by_label("Context type").select_option("PageDSL")
    await other.locator('a[data-subject="other-desk"]').wait_for(timeout=15_000)
    assert await other.locator('a[data-subject="orders-desk"]').count() == 0
    async with httpx.AsyncClient(base_url=fabric.url, timeout=10) as c:
        theirs = bearer(fabric.settings, f"other{tenant}", [*EVERYTHING, "workflows:read"])
        assert (await c.get("/v1/history/PageDSL/orders-desk", headers=theirs)).json()["versions"] == []
        assert (await c.get("/v1/workflows", headers=theirs)).json()["workflows"] == []
    async with other.expect_response(lambda r: "/v1/composites?" in r.url) as feed:
        await other.get_by_role("button", name="Composites").click()
    assert (await (await feed.value).json())["items"] == []
    assert await other.locator("tr.composite").count() == 0
    async with other.expect_response(lambda r: r.url.endswith("/v1/patterns")) as listed:
        await other.get_by_role("button", name="Patterns").click()
    assert "checkout-errors" not in {p["name"] for p in (await (await listed.value).json())["patterns"]}
    assert await other.locator("tr.pattern", has_text="checkout-errors").count() == 0
    await other.get_by_role("button", name="Policies").click()
    await eventually(lambda: other.locator("#policy-text").input_value(), 10)
    assert len(json.loads(await other.locator("#policy-text").input_value())["sections"]) == 5  # the platform's
    await other.close()


async def _has(locator: Any, text: str) -> bool:
    return text in await locator.inner_text()


async def _count(page: Any, selector: str, n: int) -> bool:
    return bool(await page.locator(selector).count() == n)


async def test_patterns_over_http_are_the_tenants_own(fabric: Fabric, tenant: str, http: httpx.AsyncClient) -> None:
    writer = bearer(fabric.settings, tenant, ["registry:write"])
    doc = {"yaml": "patterns:\n  - name: slow-pages\n    key: subject\n    aggregate:\n      fn: count\n"
                   "      window: {kind: tumbling, size: 1m}\n      when: {$gte: 3}\n"}  # fmt: skip
    assert (await http.post("/v1/patterns", json=doc)).status_code == 403  # no registry:write
    bad = await http.post("/v1/patterns", json={"yaml": doc["yaml"].replace("$gte", "$bigger")}, headers=writer)
    assert (
        bad.status_code == 422
        and bad.json()["pattern"] == "slow-pages"
        and bad.json()["field"].startswith("aggregate.when")
    ), bad.json()
    assert (await http.post("/v1/patterns", json={"yaml": "x" * 70_000}, headers=writer)).status_code == 413
    assert (await http.post("/v1/patterns", json={"text": 1}, headers=writer)).status_code == 400
    assert (await http.post("/v1/patterns", json=doc, headers=writer)).status_code == 201
    mine = await http.get("/v1/patterns")
    assert [p["owner"] for p in mine.json()["patterns"] if p["name"] == "slow-pages"] == ["tenant"]
    theirs = await http.get("/v1/patterns", headers=bearer(fabric.settings, f"x{tenant}"))
    assert "slow-pages" not in {p["name"] for p in theirs.json()["patterns"]}
    gone = await http.delete(
        "/v1/patterns/slow-pages", headers=bearer(fabric.settings, f"x{tenant}", ["registry:write"])
    )
    assert gone.status_code == 404  # not that tenant's to remove
    assert (await http.delete("/v1/patterns/slow-pages", headers=writer)).status_code == 200
    assert "slow-pages" not in {p["name"] for p in (await http.get("/v1/patterns")).json()["patterns"]}


async def test_console_files_are_its_own_with_a_strict_policy(fabric: Fabric) -> None:
    async with httpx.AsyncClient(base_url=fabric.url, timeout=10) as http:
        page = await http.get("/console")
        assert page.status_code == 200 and "app.js" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        js = await http.get("/console/vendor/htm-preact.module.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        for path in ("/console/package.json", "/console/eslint.config.mjs", "/console/../settings.py",
                     "/console/node_modules/eslint/package.json", "/console/%2e%2e/router/app.py"):  # fmt: skip
            assert (await http.get(path)).status_code == 404, path
        assert (await http.get("/v1/console/me")).status_code == 401
        assert (await http.get("/v1/console/flow")).status_code == 401
        reader = await http.get("/v1/console/flow", headers=bearer(fabric.settings, "someone"))
        assert reader.status_code == 403  # the live flow needs audit:read


async def test_workflows_over_http_are_the_tenants_own(fabric: Fabric, tenant: str, http: httpx.AsyncClient) -> None:
    s = fabric.settings
    writer, reader = bearer(s, tenant, ["registry:write", "workflows:read"]), bearer(s, tenant, ["workflows:read"])
    other = bearer(s, f"x{tenant}", ["registry:write", "workflows:read"])
    doc = {"yaml": WORKFLOW.replace("name: page-announce", "name: http-made")}
    assert (await http.post("/v1/workflows", json=doc, headers=reader)).status_code == 403  # no registry:write
    assert (await http.get("/v1/workflows", headers=bearer(s, tenant))).status_code == 403  # no workflows:read
    bad = await http.post("/v1/workflows", json={"yaml": doc["yaml"].replace("event: {", "evnt: {")}, headers=writer)
    assert bad.status_code == 422 and bad.json()["workflow"] == "http-made", bad.json()
    assert bad.json()["field"] == "phases[0].steps[0].evnt" and bad.json()["problem"] == "unknown field"
    assert (await http.post("/v1/workflows", json={"yaml": "x" * 70_000}, headers=writer)).status_code == 413
    assert (await http.post("/v1/workflows", json={"text": 1}, headers=writer)).status_code == 400
    made = await http.post("/v1/workflows", json=doc, headers=writer)
    assert made.status_code == 201 and made.json() == {"applied": ["http-made@1"], "warnings": []}
    # the same version with other content is refused: a change needs a new version
    changed = await http.post("/v1/workflows", json={"yaml": doc["yaml"].replace("wf-page", "other")}, headers=writer)
    assert changed.status_code == 409 and "give the change a new version" in changed.json()["error"]
    # a step naming a system the tenant has not registered is applied, with a warning
    desk = (
        doc["yaml"]
        .replace("version: 1", "version: 2")
        .replace(
            "      - id: tell\n", "      - id: tell\n        system: desk\n        http: {path: /x}\n      - id: also\n"
        )
    )
    warned = await http.post("/v1/workflows", json={"yaml": desk}, headers=writer)
    assert warned.status_code == 201 and warned.json()["warnings"] == [
        "http-made: step tell: no system 'desk' is registered yet"
    ], warned.json()
    listed = (await http.get("/v1/workflows", headers=reader)).json()["workflows"]
    assert [(w["name"], w["version"], w["triggers"]) for w in listed] == [("http-made", 2, ["page.updated"])]
    assert (await http.get("/v1/workflows", headers=other)).json()["workflows"] == []
    assert (await http.delete("/v1/workflows/http-made", headers=other)).status_code == 404
    assert (await http.delete("/v1/workflows/http-made", headers=writer)).status_code == 200
    assert (await http.get("/v1/workflows", headers=reader)).json()["workflows"] == []


async def test_history_is_the_tenants_and_obeys_the_access_rules(fabric: Fabric, tenant: str) -> None:
    s = fabric.settings
    writer = bearer(s, tenant)
    no_roles = bearer(s, tenant, ["context:read:*"])
    sre = bearer(s, tenant, ["context:read:*"], roles=["sre"])
    subject = "a/b 'quoted' \\ subject"
    first, second = page_event(subject, "open"), page_event(subject, "secret")
    second["sensitivity"] = "restricted"
    async with httpx.AsyncClient(base_url=fabric.url, timeout=15) as c:
        assert (await c.post("/v1/events", json=[first], headers=writer)).status_code == 202
        assert (await c.post("/v1/events", json=[second], headers=writer)).status_code == 202
        url = f"/v1/history/PageDSL/{subject.replace(' ', '%20')}"

        async def both() -> Any:
            got = (await c.get(url, headers=sre)).json()["versions"]
            return got if len(got) == 2 else None

        versions = await eventually(both, 30, interval=0.5)
        assert [v["data"]["title"] for v in versions] == ["secret", "open"]  # newest first
        assert versions[0]["sensitivity"] == "restricted" and versions[1]["provider"] == "http"
        plain = (await c.get(url, headers=no_roles)).json()["versions"]
        assert [v["data"]["title"] for v in plain] == ["open"]  # the restricted version is left out
        assert (await c.get(url, headers=bearer(s, tenant, ["context:read:LogEntry"]))).status_code == 403
        assert (await c.get(url, headers=bearer(s, f"x{tenant}", ["context:read:*"]))).json()["versions"] == []
        assert (await c.get(f"{url}?limit=0", headers=sre)).status_code == 400
        # a version too large to list whole: its size, not its data
        assert (await c.post("/v1/events", json=[page_event("big", "t" * 20_000)], headers=writer)).status_code == 202

        async def big() -> Any:
            got = (await c.get("/v1/history/PageDSL/big", headers=sre)).json()["versions"]
            return got[0] if got else None

        version = await eventually(big, 30, interval=0.5)
        assert version["data"] is None and version["data_bytes"] > 20_000
        assert (await c.get("/v1/history/Nope/x", headers=sre)).status_code == 404
        # which context an event belongs to: the tenant's, as far as the caller may read
        ids = f"{first['id']},{second['id']},nope"
        found = (await c.get(f"/v1/trail?ids={ids}", headers=sre)).json()["events"]
        assert sorted((e["id"], e["context_type"], e["subject"]) for e in found) == sorted(
            [(first["id"], "PageDSL", subject), (second["id"], "PageDSL", subject)]
        )
        assert [e["id"] for e in (await c.get(f"/v1/trail?ids={ids}", headers=no_roles)).json()["events"]] == [
            first["id"]
        ]
        theirs = bearer(s, f"x{tenant}", ["context:read:*"], roles=["sre"])
        assert (await c.get(f"/v1/trail?ids={ids}", headers=theirs)).json()["events"] == []
        assert (await c.get("/v1/trail?ids=" + ",".join(["a"] * 51), headers=sre)).status_code == 400


async def test_live_flows_are_capped_per_tenant(fabric: Fabric, tenant: str) -> None:
    """Each live flow would query the trail every 2 s: a tenant's flows share one query round,
    and a tenant cannot open more than a few on a router."""
    from fabric.router.flowshare import MAX_STREAMS

    watcher = bearer(fabric.settings, tenant, ["audit:read"])
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(base_url=fabric.url, timeout=30) as http:
        lines = []  # held: a line iterator let go closes its stream
        for _ in range(MAX_STREAMS):
            r = await stack.enter_async_context(http.stream("GET", "/v1/console/flow", headers=watcher))
            assert r.status_code == 200
            lines.append(r.aiter_lines())
            assert (await anext(lines[-1])).startswith("data: ")
        over = await http.get("/v1/console/flow", headers=watcher)
        assert over.status_code == 429 and "live flows open" in over.json()["error"]
        other = bearer(fabric.settings, f"x{tenant}", ["audit:read"])
        async with http.stream("GET", "/v1/console/flow", headers=other) as r:
            assert r.status_code == 200  # another tenant is not held back

    # closed streams are given back
    async def reopened() -> bool:
        async with httpx.AsyncClient(base_url=fabric.url, timeout=30) as http:
            async with http.stream("GET", "/v1/console/flow", headers=watcher) as r:
                return r.status_code == 200

    await eventually(reopened, 15, interval=0.5)
