"""The Kafka layer: every client the fabric makes (``clients``), its topics (``topics``),
batched sends (``send``) and compacted topics such as ``ctx.registry``, read, followed and
written in one place (``compacted``).

``from fabric import kafka`` then ``kafka.producer(settings)``, ``kafka.consumer(...)``,
``kafka.admin(...)``, ``await kafka.start(settings, client)``.
"""

from fabric.kafka.clients import admin, connection, consumer, explain, producer, start

__all__ = ["admin", "connection", "consumer", "explain", "producer", "start"]
