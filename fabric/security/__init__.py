"""The security gateway's parts: tokens, access rules, rate limits, the audit trail."""

from fabric.errors import Forbidden, RateLimited, Unauthorized
from fabric.security.access import AccessRules
from fabric.security.audit import AuditLog, AuditRecord
from fabric.security.ratelimit import RateLimiter
from fabric.security.tokens import Principal, TokenVerifier, mint

__all__ = [
    "AccessRules", "AuditLog", "AuditRecord", "Forbidden", "Principal", "RateLimited", "RateLimiter",
    "TokenVerifier", "Unauthorized", "mint",
]  # fmt: skip
