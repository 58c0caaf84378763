"""Bearer tokens: verifying them (dev key or the issuer's JWKS) and minting dev tokens.

A token is a JWT with ``tenant``, ``sub``, ``roles`` and ``scope`` claims, signed
with ES256 or RS256. The router verifies each distinct token once and remembers the
result until the token expires, so a pull pays a dictionary lookup, not a signature
check. In development ``fabric token`` signs with a local key
(``<data_dir>/keys/dev-es256.pem``, created on first use); in production the router
fetches the issuer's JWKS and refreshes it when a token names a key it has not seen.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fabric.errors import FabricError, Unauthorized
from fabric.events.codecs import TENANT
from fabric.settings import SecuritySettings, Settings

DEV_KID = "fabric-dev-1"
#: the operator's scope: writes platform objects (context types, schemas, routing, bundled
#: defaults). Honoured only on tokens of ``security.operator_tenant``; ``admin`` never implies it.
OPERATOR_SCOPE = "platform:admin"
MAX_TOKEN_BYTES = 8192


@dataclass(eq=False, slots=True)
class Principal:
    """Who is calling, from a verified token."""

    tenant: str
    sub: str
    roles: frozenset[str]
    scopes: frozenset[str]
    expires: float
    token_id: str
    #: context type -> may read it (filled on first use)
    _reads: dict[str, bool] = field(default_factory=dict)

    def can(self, scope: str) -> bool:
        """The token carries ``scope``, or ``admin`` (a tenant's every scope, not the operator's)."""
        return scope in self.scopes or ("admin" in self.scopes and scope != OPERATOR_SCOPE)

    @property
    def operator(self) -> bool:
        """May change platform objects (what every tenant shares)."""
        return OPERATOR_SCOPE in self.scopes

    def can_read(self, context_type: str) -> bool:
        """``context:read:<type>``, ``context:read:*`` or ``admin``; composites also by ``composites:read``."""
        ok = self._reads.get(context_type)
        if ok is None:
            s = self.scopes
            ok = (
                "admin" in s
                or "context:read:*" in s
                or f"context:read:{context_type}" in s
                or (context_type == "Composite" and "composites:read" in s)
            )
            self._reads[context_type] = ok
        return ok


def load_dev_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The dev issuer's key; created (mode 0600) when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, path)  # first writer wins; a racing process reads the winner's key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise FabricError(f"{path} is not an EC private key")
    return loaded


def mint(
    settings: Settings,
    tenant: str,
    scopes: list[str],
    *,
    sub: str = "dev",
    roles: list[str] | None = None,
    ttl_s: int = 3600,
    key: Any = None,
    algorithm: str = "ES256",
    kid: str = DEV_KID,
    extra: dict[str, Any] | None = None,
) -> str:
    """A signed token for ``tenant``. Defaults to the dev issuer's key."""
    if not TENANT.fullmatch(tenant):
        raise ValueError(f"invalid tenant {tenant!r}")
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.security.issuer, "aud": settings.security.audience, "sub": sub, "tenant": tenant,
        "roles": roles or [], "scope": " ".join(scopes), "iat": now, "exp": now + ttl_s, "jti": uuid.uuid4().hex,
    }  # fmt: skip
    claims.update(extra or {})
    signing = key if key is not None else load_dev_key(settings.dev_key_file)
    return jwt.encode(claims, signing, algorithm=algorithm, headers={"kid": kid})


def dev_jwks(settings: Settings) -> dict[str, Any]:
    """The dev issuer's public key as a JWKS document."""
    public = load_dev_key(settings.dev_key_file).public_key()
    jwk: dict[str, Any] = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    return {"keys": [{**jwk, "kid": DEV_KID, "use": "sig", "alg": "ES256"}]}


class TokenVerifier:
    """Checks bearer tokens and remembers the good ones until they expire.

    The cache is bounded by count and by bytes (``security.token_cache``,
    ``security.token_cache_bytes``); tokens over ``MAX_TOKEN_BYTES`` are refused unread."""

    def __init__(self, settings: Settings) -> None:
        self.sec: SecuritySettings = settings.security
        self._settings = settings
        #: kid -> (key, the one algorithm it verifies)
        self._keys: dict[str, tuple[Any, str]] = {}
        self._cache: dict[str, Principal] = {}
        self._cache_bytes = 0
        self._refreshed = 0.0
        self._lock = asyncio.Lock()
        if not self.sec.jwks_url:
            self._keys[DEV_KID] = (load_dev_key(settings.dev_key_file).public_key(), "ES256")

    async def start(self) -> None:
        if self.sec.jwks_url:
            await self._refresh(force=True)

    async def _refresh(self, force: bool = False) -> None:
        """Fetch the JWKS again, at most every 30 s unless forced."""
        async with self._lock:
            if not force and time.monotonic() - self._refreshed < 30:
                return
            self._refreshed = time.monotonic()
            try:
                async with httpx.AsyncClient(timeout=5) as http:
                    r = await http.get(self.sec.jwks_url)
                    r.raise_for_status()
                    doc = r.json()
                jwks = jwt.PyJWKSet.from_dict(doc)
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as e:
                if force:
                    raise FabricError(f"cannot fetch the issuer's JWKS from {self.sec.jwks_url}: {e}") from e
                return
            self._keys = {k.key_id: (k.key, k.algorithm_name) for k in jwks.keys if k.key_id}

    async def verify(self, header: str | None) -> Principal:
        """The caller of an ``Authorization`` header value; raises Unauthorized."""
        if not header:
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized(f"token is over {MAX_TOKEN_BYTES} bytes")
        p = self._cache.get(token)
        if p is not None:
            if p.expires > time.time():
                return p
            self._forget(token)
            raise Unauthorized("token expired")
        try:
            kid = jwt.get_unverified_header(token).get("kid", "")
        except jwt.PyJWTError as e:
            raise Unauthorized(f"malformed token: {e}") from None
        if not isinstance(kid, str):
            raise Unauthorized("malformed token: kid must be a string")
        if kid not in self._keys and self.sec.jwks_url:
            await self._refresh()
        p = self.check(token, kid)
        while self._cache and (
            len(self._cache) >= self.sec.token_cache or self._cache_bytes + len(token) > self.sec.token_cache_bytes
        ):
            self._forget(next(iter(self._cache)))
        self._cache[token] = p
        self._cache_bytes += len(token)
        return p

    def _forget(self, token: str) -> None:
        if self._cache.pop(token, None) is not None:
            self._cache_bytes -= len(token)

    def check(self, token: str, kid: str) -> Principal:
        found = self._keys.get(kid)
        if found is None:
            raise Unauthorized(f"token signed by an unknown key {kid!r}")
        key, algorithm = found
        if algorithm not in self.sec.algorithms:
            raise Unauthorized(f"key {kid!r} is for {algorithm!r}, not one of {', '.join(self.sec.algorithms)}")
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm],
                audience=self.sec.audience, issuer=self.sec.issuer, leeway=self.sec.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub", "tenant"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except (jwt.PyJWTError, ValueError, TypeError) as e:  # a key of another type, a bad alg: refused too
            raise Unauthorized(f"invalid token: {e}") from None
        tenant = claims["tenant"]
        if not isinstance(tenant, str) or not TENANT.fullmatch(tenant):
            raise Unauthorized("invalid token: the tenant claim is not a tenant name")
        scope = claims.get("scope", "")
        if isinstance(scope, str):
            scopes = scope.split()
        elif isinstance(scope, list) and all(isinstance(s, str) for s in scope):
            scopes = list(scope)
        else:
            raise Unauthorized("invalid token: scope must be a space-separated string or a list of strings")
        roles = claims.get("roles") or []
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthorized("invalid token: roles must be a list of strings")
        if not isinstance(claims["sub"], str) or not isinstance(claims["exp"], int | float):
            raise Unauthorized("invalid token: sub must be a string and exp a number")
        if tenant != self.sec.operator_tenant and OPERATOR_SCOPE in scopes:
            scopes.remove(OPERATOR_SCOPE)  # a tenant's token never acts for the platform
        return Principal(
            tenant, claims["sub"], frozenset(roles), frozenset(scopes),
            float(claims["exp"]) + self.sec.leeway_s, str(claims.get("jti") or claims["sub"]),
        )  # fmt: skip


def open_principal(settings: Settings) -> Principal:
    """The caller when auth is off (benchmarks on loopback): every scope, no roles."""
    return Principal(
        settings.security.dev_tenant, "anonymous", frozenset(), frozenset({"admin", OPERATOR_SCOPE}), float("inf"), "-"
    )
