"""The Redis hot cache: its key layout (``keys``), the Lua scripts that write it
(``scripts``, run by the materializer) and the pipelined client the router reads it with."""

from fabric.cache.fastredis import FastCluster, FastRedis, Pipelined, RedisUnavailable
from fabric.cache.keys import CacheKeys

__all__ = ["CacheKeys", "FastCluster", "FastRedis", "Pipelined", "RedisUnavailable"]
