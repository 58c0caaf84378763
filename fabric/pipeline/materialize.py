"""The materialize stage: typed topics -> Redis hot cache and the per-tenant change feed.

A partition's batch is applied by one Lua script call per tenant in it, atomically
with that tenant's applied offset of the partition, so a replayed batch (after a crash
or rebalance) changes nothing; state types additionally keep only the highest
``sequence`` per subject. A script touches one tenant's keys only, so on a Redis
Cluster it runs on one slot. The partition's own offset, written after its tenants,
is where a new owner of the partition starts reading. Every applied change is
appended to the tenant's change feed (a Redis stream) that the router pushes to
subscribers.

Redis layout (``P`` = key prefix, ``{T}`` = tenant as a cluster hash tag):
- ``P:{T}:ctx:<type>:<subject>``  hash: seq, at (event time, ms), v (event JSON), count,
  sens (sensitivity level digit, see ``LEVELS``), q (quality score, "" when not scored)
- ``P:{T}:win:<type>:<subject>``  list: recent events, newest first (stream types), each
  its sensitivity digit followed by the event JSON
- ``P:{T}:recent:<type>``         sorted set: subject by last change time
- ``P:{T}:changes``               stream: ct, type, subject, seq, at, v, sens, q
- ``P:{T}:offsets:<topic>:<partition>`` the highest offset applied for the tenant
- ``P:{offsets}:<topic>:<partition>`` the highest offset applied for every tenant
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

from fabric.cache.keys import CacheKeys
from fabric.cache.scripts import ADVANCE_OFFSET, APPLY_CHANGES
from fabric.events.envelope import LEVEL
from fabric.events.headers import CACHE_JSON, CACHE_KEY
from fabric.events.times import ms_of
from fabric.settings import Settings

STATE_LOST = -1


@dataclass(slots=True)
class Change:
    """One decoded typed-topic record, ready to be written."""

    tenant: str
    ctype: str
    kind: str  # 'state' | 'stream'
    type: str
    subject: str
    sequence: int
    at_ms: int
    json: bytes
    offset: int
    id: str = ""
    level: int = 1  # sensitivity, an index into LEVELS (1: internal)
    quality: float | None = None  # the quality processor's score


_encoder = msgspec.json.Encoder()


def change_from_record(ctype: str, kind: str, rec: dict[str, Any], offset: int) -> Change:
    """Build a Change from a decoded typed-envelope dict (the event JSON drops nulls)."""
    t: datetime = rec["time"]
    event = {k: v for k, v in rec.items() if v is not None}
    return Change(
        tenant=rec["tenant"], ctype=ctype, kind=kind, type=rec["type"], subject=rec["subject"],
        sequence=rec["sequence"], at_ms=ms_of(t), json=_encoder.encode(event),
        offset=offset, id=rec.get("id") or "", level=LEVEL.get(rec.get("sensitivity") or "internal", 1),
        quality=rec.get("quality"),
    )  # fmt: skip


def change_from_headers(ctype: str, kind: str, headers: dict[str, bytes], offset: int) -> Change | None:
    """The Change the route stage described in headers, or None when they are absent
    (a record some other producer wrote: decode its Avro instead)."""
    key = headers.get(CACHE_KEY)
    body = headers.get(CACHE_JSON)
    if key is None or body is None:
        return None
    seq, at, tenant, etype, subject, event_id, *rest = msgspec.json.decode(key)
    level = int(rest[0]) if rest else 1
    quality = float(rest[1]) if len(rest) > 1 else None
    return Change(tenant, ctype, kind, etype, subject, int(seq), int(at), body, offset, event_id, level, quality)


class Materializer:
    """Writes batches of changes to Redis; one script call per tenant of a partition batch."""

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = CacheKeys(settings.redis.key_prefix)
        self._script = redis.register_script(APPLY_CHANGES)
        self._advance = redis.register_script(ADVANCE_OFFSET)
        self.chunk = 500

    async def applied_offset(self, topic: str, partition: int) -> int | None:
        """The highest offset of a partition already in the cache, None when unknown."""
        raw = await self.redis.get(self.keys.offset(topic, partition))
        return None if raw is None else int(raw)

    async def apply(
        self,
        topic: str,
        partition: int,
        changes: list[Change],
        *,
        last_offset: int = -1,
        allow_missing: bool = False,
        push_from: int = 0,
    ) -> int:
        """Apply one partition's changes in offset order; returns how many changed the cache,
        or ``STATE_LOST`` when the partition's offset key is gone (Redis was flushed or
        restarted) and ``allow_missing`` is false: nothing was written, replay from the start.

        A crash between two tenants' scripts is safe: the partition is read again from its
        own offset, and each tenant's script skips what its offset says it has."""
        if not allow_missing and await self.applied_offset(topic, partition) is None:
            return STATE_LOST
        total = 0
        k = self.keys
        r = self.settings.redis
        last_offset = max(last_offset, changes[-1].offset if changes else -1)
        for i in range(0, max(1, len(changes)), self.chunk):
            part = changes[i : i + self.chunk]
            # a chunk marks the partition read up to its last change; the final chunk up to
            # the batch's last record, changes or not
            part_last = part[-1].offset if i + self.chunk < len(changes) else last_offset
            by_tenant: dict[str, list[Change]] = {}
            for c in part:
                by_tenant.setdefault(c.tenant, []).append(c)
            calls = []
            for tenant, mine in by_tenant.items():
                keys = [k.tenant_offset(tenant, topic, partition)]
                args: list[Any] = [
                    r.stream_window,
                    r.change_retention,
                    push_from,
                    part_last,
                    r.change_retention_s * 1000,
                ]
                for c in mine:
                    keys += [k.ctx(tenant, c.ctype, c.subject), k.window(tenant, c.ctype, c.subject),
                             k.recent(tenant, c.ctype), k.changes(tenant)]  # fmt: skip
                    args += ["s" if c.kind == "state" else "w", c.subject, c.sequence, c.at_ms,
                             c.json, c.type, c.ctype, c.offset, c.id, c.level,
                             "" if c.quality is None else c.quality]  # fmt: skip
                calls.append(self._script(keys=keys, args=args))
            total += sum(int(n) for n in await asyncio.gather(*calls))
            await self._advance(keys=[k.offset(topic, partition)], args=[part_last])
        return total
