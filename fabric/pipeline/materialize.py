"""The materialize stage: typed topics -> Redis hot cache and the per-tenant change feed.

Each partition's batch is applied by one Lua script call, atomically with the
partition's applied offset, so a replayed batch (after a crash or rebalance) changes
nothing; state types additionally keep only the highest ``sequence`` per subject.
Every applied change is appended to the tenant's change feed (a Redis stream) that
the router pushes to subscribers.

Redis layout (``P`` = key prefix, ``{T}`` = tenant as a cluster hash tag):
- ``P:{T}:ctx:<type>:<subject>``  hash: seq, at (event time, ms), v (event JSON), count,
  sens (sensitivity level digit, see ``LEVELS``)
- ``P:{T}:win:<type>:<subject>``  list: recent events, newest first (stream types), each
  its sensitivity digit followed by the event JSON
- ``P:{T}:recent:<type>``         sorted set: subject by last change time
- ``P:{T}:changes``               stream: ct, type, subject, seq, at, v, sens
- ``P:offsets:<topic>:<partition>`` the highest applied offset
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

from fabric.settings import Settings
from fabric.topics.envelope import LEVEL

_LUA = """
-- KEYS[1] applied offset of the partition; then 4 keys per change.
-- ARGV[1] window, ARGV[2] feed retention, ARGV[3] '1' if the offset key may be
-- missing (a fresh partition or a rebuild), ARGV[4] first offset to push to the
-- feed (a rebuild re-applies history that subscribers have already been sent),
-- ARGV[5] the batch's last offset (records that were not changes still count as read),
-- ARGV[6] feed retention in ms (older changes are trimmed).
local cur = redis.call('GET', KEYS[1])
if not cur and ARGV[3] == '0' then return -1 end
local applied = tonumber(cur or '-1')
local window = tonumber(ARGV[1])
local retention = ARGV[2]
local push_from = tonumber(ARGV[4])
local n = (#KEYS - 1) / 4
local per = 10
local last = math.max(applied, tonumber(ARGV[5]))
local changed = 0
local feeds = {}
for i = 0, n - 1 do
  local a = 7 + i * per
  local off = tonumber(ARGV[a + 7])
  if off > applied then
    if off > last then last = off end
    local ck, wk, rk, fk = KEYS[2 + i*4], KEYS[3 + i*4], KEYS[4 + i*4], KEYS[5 + i*4]
    local kind, subject, seq, at, v = ARGV[a], ARGV[a+1], ARGV[a+2], ARGV[a+3], ARGV[a+4]
    local sens = ARGV[a+9]
    local apply = true
    if kind == 's' then
      local cur_seq = redis.call('HGET', ck, 'seq')
      if cur_seq and tonumber(cur_seq) >= tonumber(seq) then apply = false end
    elseif ARGV[a+8] ~= '' then
      -- stream types: an event already in the window (routed twice after a crash) is skipped
      local idk = wk .. ':ids'
      if redis.call('ZADD', idk, 'NX', off, ARGV[a+8]) == 0 then
        apply = false
      else
        redis.call('ZREMRANGEBYRANK', idk, 0, -(window + 1))
      end
    end
    if apply then
      if kind == 'w' then
        redis.call('LPUSH', wk, sens .. v)
        redis.call('LTRIM', wk, 0, window - 1)
      end
      redis.call('HSET', ck, 'seq', seq, 'at', at, 'v', v, 'sens', sens)
      redis.call('HINCRBY', ck, 'count', 1)
      redis.call('ZADD', rk, at, subject)
      if off >= push_from then
        redis.call('XADD', fk, 'MAXLEN', '~', retention, '*',
                   'ct', ARGV[a+6], 'type', ARGV[a+5], 'subject', subject, 'seq', seq, 'at', at, 'v', v,
                   'sens', sens)
        feeds[fk] = true
      end
      changed = changed + 1
    end
  end
end
if next(feeds) then
  local t = redis.call('TIME')
  local oldest = tonumber(t[1]) * 1000 - tonumber(ARGV[6])
  for fk in pairs(feeds) do redis.call('XTRIM', fk, 'MINID', '~', oldest) end
end
if last > applied then redis.call('SET', KEYS[1], last) end
return changed
"""

STATE_LOST = -1


class CacheKeys:
    """Key names, shared by the materializer and the router."""

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
        return f"{self.prefix}:offsets:{topic}:{partition}"

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


_encoder = msgspec.json.Encoder()


def change_from_record(ctype: str, kind: str, rec: dict[str, Any], offset: int) -> Change:
    """Build a Change from a decoded typed-envelope dict (the event JSON drops nulls)."""
    t: datetime = rec["time"]
    event = {k: v for k, v in rec.items() if v is not None}
    return Change(
        tenant=rec["tenant"], ctype=ctype, kind=kind, type=rec["type"], subject=rec["subject"],
        sequence=rec["sequence"], at_ms=int(t.timestamp() * 1000), json=_encoder.encode(event),
        offset=offset, id=rec.get("id") or "", level=LEVEL.get(rec.get("sensitivity") or "internal", 1),
    )  # fmt: skip


def change_from_headers(ctype: str, kind: str, headers: dict[str, bytes], offset: int) -> Change | None:
    """The Change the route stage described in headers, or None when they are absent
    (a record some other producer wrote: decode its Avro instead)."""
    key = headers.get("fabric_cache_key")
    body = headers.get("fabric_cache_json")
    if key is None or body is None:
        return None
    seq, at, tenant, etype, subject, event_id, *rest = msgspec.json.decode(key)
    level = int(rest[0]) if rest else 1
    return Change(tenant, ctype, kind, etype, subject, int(seq), int(at), body, offset, event_id, level)


class Materializer:
    """Writes batches of changes to Redis; one script call per partition batch."""

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = CacheKeys(settings.redis.key_prefix)
        self._script = redis.register_script(_LUA)
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
        restarted) and ``allow_missing`` is false: nothing was written, replay from the start."""
        total = 0
        k = self.keys
        last_offset = max(last_offset, changes[-1].offset if changes else -1)
        for i in range(0, max(1, len(changes)), self.chunk):
            part = changes[i : i + self.chunk]
            # a chunk marks the partition read up to its last change; the final chunk up to
            # the batch's last record, changes or not
            part_last = part[-1].offset if i + self.chunk < len(changes) else last_offset
            keys = [k.offset(topic, partition)]
            args: list[Any] = [
                self.settings.redis.stream_window, self.settings.redis.change_retention,
                "1" if allow_missing else "0", push_from, part_last,
                self.settings.redis.change_retention_s * 1000,
            ]  # fmt: skip
            for c in part:
                keys += [
                    k.ctx(c.tenant, c.ctype, c.subject), k.window(c.tenant, c.ctype, c.subject),
                    k.recent(c.tenant, c.ctype), k.changes(c.tenant),
                ]  # fmt: skip
                args += [
                    "s" if c.kind == "state" else "w", c.subject, c.sequence, c.at_ms,
                    c.json, c.type, c.ctype, c.offset, c.id, c.level,
                ]  # fmt: skip
            n = int(await self._script(keys=keys, args=args))
            if n == STATE_LOST:
                return STATE_LOST
            total += n
            allow_missing = True  # the first chunk wrote the offset key
        return total
