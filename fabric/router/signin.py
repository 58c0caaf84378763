"""Signing in to the console through the configured OIDC issuer: the authorization-code flow
with PKCE (RFC 7636), the browser being a public client.

The router tells the console where to send the person (``GET /v1/console/config``): the
issuer, the console's client id, the scopes, and the issuer's authorization and token
endpoints from its discovery document (``<issuer>/.well-known/openid-configuration``,
fetched off the request path, once an hour at most). The console redirects there with a
S256 code challenge and a random state, takes the code back at ``/console``, and trades it
with the verifier for an access token at the token endpoint. That token is a JWT the router
verifies like any other (``security.issuer``, ``audience``, ``jwks_url``; it must carry the
``tenant`` claim), so the console sees what the person's tenant and scopes allow.

The page's Content-Security-Policy allows connections to the issuer's origin and its token
endpoint's, and nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlparse

import httpx

from fabric.errors import BackendUnavailable
from fabric.settings import SecuritySettings

REFRESH_S = 3600.0
RETRY_S = 30.0


def origin(url: str) -> str:
    u = urlparse(url)
    return f"{u.scheme}://{u.netloc}"


class ConsoleSignIn:
    """The console's OIDC configuration, from the settings and the issuer's discovery document."""

    def __init__(self, sec: SecuritySettings) -> None:
        self.sec = sec
        self._doc: dict[str, Any] | None = None
        self._fetched = 0.0
        self._failed = 0.0
        self._error = ""
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        """Only against a real issuer: the dev issuer signs tokens with ``fabric token``."""
        return bool(self.sec.oidc_client_id and self.sec.jwks_url)

    def connect_sources(self) -> list[str]:
        """The origins the console page may connect to besides its own."""
        if not self.enabled:
            return []
        found = {origin(self.sec.issuer)}
        if self._doc:
            found.add(origin(self._doc["token_endpoint"]))
        return sorted(found)

    async def config(self) -> dict[str, Any]:
        """What the console needs to start a sign-in (``{"oidc": None}`` when not configured);
        raises BackendUnavailable while the issuer's discovery document cannot be had."""
        if not self.enabled:
            return {"oidc": None}
        doc = await self._discovery()
        return {
            "oidc": {
                "issuer": self.sec.issuer, "client_id": self.sec.oidc_client_id, "scope": self.sec.oidc_scope,
                "resource": self.sec.oidc_resource or None,
                "authorization_endpoint": doc["authorization_endpoint"], "token_endpoint": doc["token_endpoint"],
            }
        }  # fmt: skip

    async def _discovery(self) -> dict[str, Any]:
        async with self._lock:
            now = time.monotonic()
            if self._doc is not None and now - self._fetched < REFRESH_S:
                return self._doc
            if self._doc is None and now - self._failed < RETRY_S:
                raise BackendUnavailable(self._error)
            try:
                doc = await self._fetch()
            except BackendUnavailable as e:
                if self._doc is not None:  # keep the last good one while the issuer is away
                    return self._doc
                self._failed, self._error = now, str(e)
                raise
            self._doc, self._fetched = doc, now
            return doc

    async def _fetch(self) -> dict[str, Any]:
        url = self.sec.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with httpx.AsyncClient(timeout=5, follow_redirects=False, trust_env=False) as http:
                r = await http.get(url)
                r.raise_for_status()
                doc = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise BackendUnavailable(f"the issuer's discovery document ({url}) could not be read: {e}") from None
        problem = discovery_problem(doc, self.sec.issuer)
        if problem:
            raise BackendUnavailable(f"the issuer's discovery document ({url}) {problem}")
        return doc  # type: ignore[no-any-return]


def discovery_problem(doc: Any, issuer: str) -> str:
    """Why ``doc`` is not a usable discovery document of ``issuer`` ('' when it is)."""
    if not isinstance(doc, dict):
        return "is not a JSON object"
    if doc.get("issuer") != issuer:  # OpenID Connect Discovery 1.0, section 4.3
        return f"names issuer {str(doc.get('issuer'))[:100]!r}, not {issuer!r}"
    for name in ("authorization_endpoint", "token_endpoint"):
        value = doc.get(name)
        if not isinstance(value, str) or urlparse(value).scheme not in ("http", "https"):
            return f"has no usable {name}"
    methods = doc.get("code_challenge_methods_supported")
    if methods is not None and "S256" not in methods:
        return "does not offer PKCE with S256"
    return ""
