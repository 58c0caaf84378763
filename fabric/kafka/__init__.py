"""The Kafka layer: every client the fabric makes (``clients``), its topics (``topics``),
batched sends (``send``) and the compacted ``ctx.registry`` topic, read and written once
(``compacted``).

``from fabric import kafka`` then ``kafka.producer(settings)``, ``kafka.consumer(...)``,
``kafka.admin(...)``, ``await kafka.start(settings, client)``.
"""

from fabric.kafka.clients import admin, connection, consumer, explain, producer, publish, start

__all__ = ["admin", "connection", "consumer", "explain", "producer", "publish", "start"]
