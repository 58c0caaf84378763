"""The console's production sign-in: the authorization-code flow with PKCE against a real
OpenID Connect issuer on loopback (panva's oidc-provider, tests/integration/oidc/), in
Debian's Chromium. The router trusts that issuer's JWKS only: the person's token carries
their tenant, a dev token is refused, and a code brought back with a state the console did
not send is not traded."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fabric.dev.procs import free_port
from fabric.dev.stack import Stack
from fabric.settings import Settings
from fabric.testing import bearer
from tests.integration.conftest import Fabric, start_fabric, variant
from tests.integration.test_console import SHOTS, browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration
ISSUER_DIR = Path(__file__).resolve().parent / "oidc"


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[tuple[str, int, Any]]:
    """The issuer's port and a function starting it for a redirect URI and audience."""
    npm = shutil.which("npm")
    node = shutil.which("node") or shutil.which("nodejs")
    if npm is None or node is None:
        pytest.fail("the OIDC test needs Node.js and npm (make test installs them)")
    if not (ISSUER_DIR / "node_modules" / "oidc-provider").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=ISSUER_DIR, check=True, timeout=600)
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(redirect_uri: str, audience: str) -> None:
        with (tmp_path / "issuer.log").open("wb") as log:
            procs.append(subprocess.Popen([node, "idp.mjs", str(port), redirect_uri, audience], cwd=ISSUER_DIR,
                                          stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/.well-known/openid-configuration", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the issuer did not start: {(tmp_path / 'issuer.log').read_text()[-2000:]}")

    yield f"http://127.0.0.1:{port}", port, start
    for p in procs:
        p.terminate()
        p.wait(10)


@pytest.fixture
def oidc_fabric(
    stack: Stack, stack_settings: Settings, tmp_path: Path, issuer: tuple[str, int, Any]
) -> Iterator[Fabric]:
    url, _, start = issuer
    s = variant(stack_settings, tmp_path)
    router = f"http://127.0.0.1:{s.router.port}"
    start(f"{router}/console", router)
    s = s.model_copy(update={"security": s.security.model_copy(update={
        "issuer": url, "jwks_url": f"{url}/jwks", "audience": router, "oidc_client_id": "fabric-console",
        "oidc_scope": "openid admin audit:read workflows:read context:read:*", "oidc_resource": router})})  # fmt: skip
    fab = start_fabric(s, ("worker", "router"))
    yield fab
    fab.stop()


async def test_console_signs_in_through_the_issuer_with_pkce(
    oidc_fabric: Fabric,
    issuer: tuple[str, int, Any],
    tenant: str,
    browser: Any,  # noqa: F811
) -> None:
    url, _, _ = issuer
    async with httpx.AsyncClient(base_url=oidc_fabric.url, timeout=10) as http:
        config = (await http.get("/v1/console/config")).json()["oidc"]
        assert config["client_id"] == "fabric-console" and config["token_endpoint"] == f"{url}/token"
        page_csp = (await http.get("/console")).headers["content-security-policy"]
        assert f"connect-src 'self' {url};" in page_csp
        # the router trusts the issuer's keys only: a token of the dev issuer is refused
        dev = await http.get("/v1/console/me", headers=bearer(oidc_fabric.settings, tenant, ["admin"]))
        assert dev.status_code == 401

    page = await browser.new_page(viewport={"width": 1366, "height": 800})
    await page.goto(f"{oidc_fabric.url}/console")
    button = page.get_by_role("button", name=f"Sign in with 127.0.0.1:{issuer[1]}")
    await button.wait_for()
    await page.screenshot(path=str(SHOTS / "signin.png"))
    await button.click()
    # the issuer's own login page (oidc-provider's development interactions)
    await page.locator("input[name=login]").fill(f"alice@{tenant}")
    await page.locator("input[name=password]").fill("any")
    await page.locator("button[type=submit]").click()
    await page.get_by_role("button", name="Continue").click()  # its consent page: the scopes asked for
    await page.locator("#tenant").wait_for(timeout=30_000)
    assert await page.locator("#tenant").inner_text() == tenant
    assert page.url == f"{oidc_fabric.url}/console"  # the code is not left in the address bar
    # the token the console holds is the issuer's, with the person's tenant and the scopes asked for
    token = await page.evaluate("sessionStorage.getItem('fabric.console.token')")
    async with httpx.AsyncClient(base_url=oidc_fabric.url, timeout=10) as http:
        me = (await http.get("/v1/console/me", headers={"Authorization": f"Bearer {token}"})).json()
    assert me["tenant"] == tenant and me["subject"] == f"alice@{tenant}"
    assert {"admin", "audit:read", "workflows:read"} <= set(me["scopes"])
    await page.get_by_role("button", name="Workflows").click()
    await page.locator("table[aria-label='Workflow runs']").wait_for()
    await page.close()

    # a code brought back with a state this console did not send is not traded
    forged = await browser.new_page()
    await forged.goto(f"{oidc_fabric.url}/console?code=stolen&state=not-mine")
    await forged.locator("#signin-error").wait_for()
    assert "state does not match" in await forged.locator("#signin-error").inner_text()
    assert await forged.evaluate("sessionStorage.getItem('fabric.console.token')") is None
    await forged.close()


async def test_console_config_without_an_issuer(fabric: Fabric) -> None:
    async with httpx.AsyncClient(base_url=fabric.url, timeout=10) as http:
        assert (await http.get("/v1/console/config")).json() == {"oidc": None}
        assert "connect-src 'self';" in (await http.get("/console")).headers["content-security-policy"]
