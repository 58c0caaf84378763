"""The Redis hot cache: its key layout and the pipelined client the router reads it with.
The Lua scripts that write it belong to the materializer (``fabric.pipeline.materialize``)."""

from fabric.cache.fastredis import FastCluster, FastRedis, Pipelined, RedisUnavailable
from fabric.cache.keys import CacheKeys

__all__ = ["CacheKeys", "FastCluster", "FastRedis", "Pipelined", "RedisUnavailable"]
