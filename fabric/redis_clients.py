"""Every redis-py client of the fabric, built from settings: one Redis node, or a Redis
Cluster (``redis.cluster``) reached through any one of its nodes.

The key layout makes the cluster work: everything of a tenant carries the tenant as a
hash tag (``P:{T}:...``), the materializer's partition offsets share the tag
``{offsets}``, and no command or script touches keys of two tags, so each lands on one
slot. The router's hot path has its own pipelining client (``fabric.cache.fastredis``) with
the same two modes.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from fabric.settings import Settings


def connect(settings: Settings, **options: Any) -> aioredis.Redis:
    """A client for ``settings.redis``. A cluster client has the same commands, pipelines
    and scripts (routed by key slot), so callers need not know which they hold."""
    s = settings.redis
    if s.cluster:
        return cast(aioredis.Redis, RedisCluster.from_url(s.url, **options))
    return aioredis.from_url(s.url, **options)
