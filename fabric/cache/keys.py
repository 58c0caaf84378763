"""The cache's key layout, shared by the materializer (writes) and the router (reads).

Every key of a tenant carries its hash tag ``{tenant}``, so each script touches one slot
on a Redis Cluster."""

from __future__ import annotations


class CacheKeys:
    """Key names under one prefix (``redis.key_prefix``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def ctx(self, tenant: str, ctype: str, subject: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:ctx:{ctype}:{subject}"

    def window(self, tenant: str, ctype: str, subject: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:win:{ctype}:{subject}"

    def recent(self, tenant: str, ctype: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:recent:{ctype}"

    def changes(self, tenant: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:changes"

    def offset(self, topic: str, partition: int) -> str:
        """Read up to here for every tenant (one hash tag for all, so one MGET reads them)."""
        return f"{self.prefix}:{{offsets}}:{topic}:{partition}"

    def tenant_offset(self, tenant: str, topic: str, partition: int) -> str:
        return f"{self.prefix}:{{{tenant}}}:offsets:{topic}:{partition}"

    @property
    def watermarks(self) -> str:
        """Hash: ``<topic>:<partition>`` -> "complete_ms,reported_ms,caught_up" (see MaterializeStage)."""
        return f"{self.prefix}:watermarks"

    @property
    def ready(self) -> str:
        """Set by the materializer once the cache holds everything; gone after a flush."""
        return f"{self.prefix}:ready"

    @property
    def rebuilding(self) -> str:
        """Set (with a short TTL, refreshed) while a materializer replays history."""
        return f"{self.prefix}:rebuilding"
