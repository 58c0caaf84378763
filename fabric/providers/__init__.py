"""Ways in: the provider SDK (HTTP ingest lives in the router, Kafka clients produce directly)."""

from fabric.providers.sdk import Provider, PublishReport

__all__ = ["Provider", "PublishReport"]
