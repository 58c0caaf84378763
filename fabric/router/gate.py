"""The security gateway every request passes: who is calling, may they, how often, and the audit.

Order of checks: bearer token (401), rate limits (429), then per action the scope
(403) and, on each context returned, the attribute rules on its sensitivity (403 on
a single pull; left out of listings, pushes and assemblies). A tenant never appears
in a URL or a body: every lookup is made inside the token's tenant, so another
tenant's data cannot be addressed at all, and "not found" looks the same whether a
subject exists elsewhere or nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import RedisError

from fabric.cache.fastredis import RedisUnavailable
from fabric.errors import RateLimited, Unauthorized
from fabric.router.problems import HTTPProblem
from fabric.security.access import AccessRules
from fabric.security.audit import AuditLog, trace_id_of
from fabric.security.ratelimit import RateLimiter
from fabric.security.tokens import Principal, TokenVerifier, open_principal
from fabric.settings import Settings

CHALLENGE = 'Bearer realm="context-fabric"'


@dataclass
class Gate:
    settings: Settings
    verifier: TokenVerifier
    rules: AccessRules
    limiter: RateLimiter
    audit: AuditLog

    @property
    def enabled(self) -> bool:
        return self.settings.security.auth == "jwt"

    async def authenticate(self, authorization: str | None, action: str, resource: str, trace: str) -> Principal:
        """The verified caller; 401 (audited) without a good token."""
        if not self.enabled:
            return open_principal(self.settings)
        try:
            return await self.verifier.verify(authorization)
        except Unauthorized as e:
            self.audit.record(None, action, resource, "deny", f"401 {e}", trace)
            raise HTTPProblem(401, str(e), {"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'}) from None

    async def admit(
        self, authorization: str | None, traceparent: str | None, action: str, resource: str
    ) -> tuple[Principal, str]:
        """Authenticate and take a rate-limit token: (caller, trace id)."""
        trace = trace_id_of(traceparent)
        who = await self.authenticate(authorization, action, resource, trace)
        if self.enabled:
            try:
                await self.limiter.check(who)
            except RateLimited as e:
                raise self.limited(who, action, resource, trace, e) from None
            except (RedisUnavailable, RedisError) as e:
                raise HTTPProblem(503, f"the rate limiter's store is unavailable: {e}", {"Retry-After": "1"}) from None
        return who, trace

    def limited(self, who: Principal, action: str, resource: str, trace: str, e: RateLimited) -> HTTPProblem:
        self.audit.record(who, action, resource, "deny", "429 rate limited", trace)
        return HTTPProblem(429, str(e), {"Retry-After": str(e.retry_after)})

    def forbid(self, who: Principal, action: str, resource: str, trace: str, reason: str) -> HTTPProblem:
        """A 403, audited."""
        self.audit.record(who, action, resource, "deny", f"403 {reason}", trace)
        return HTTPProblem(403, reason)

    def require(self, who: Principal, scope: str, action: str, resource: str, trace: str) -> None:
        if not who.can(scope):
            raise self.forbid(who, action, resource, trace, f"the token lacks scope {scope!r}")

    def require_read(self, who: Principal, context_type: str, action: str, resource: str, trace: str) -> None:
        if not who.can_read(context_type):
            raise self.forbid(
                who, action, resource, trace, f"the token lacks scope 'context:read:{context_type}'"
            )  # fmt: skip

    def denied_by(self, who: Principal, context_type: str, level: int) -> str | None:
        """The access rule keeping ``who`` from a context of this type and sensitivity, if any."""
        if not self.enabled:
            return None
        return self.rules.denied_by(who, context_type, level)

    def record_allowed(self, who: Principal, action: str, resource: str, trace: str, reason: str = "") -> None:
        """Audit a request the checks above let through (the decision was made before)."""
        if self.enabled:
            self.audit.record(who, action, resource, "allow", reason, trace)
