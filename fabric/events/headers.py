"""Kafka record headers the fabric writes beside an event, part of its wire contract."""

#: who handed the event in (``http``, or a provider SDK's source); the route stage records it
PROVIDER_HEADER = "fabric_provider"
#: on typed-topic records: the event as the cache stores it (JSON), so readers skip Avro
CACHE_JSON = "fabric_cache_json"
#: on typed-topic records: the cache fields the materializer needs without decoding
CACHE_KEY = "fabric_cache_key"

#: on a ctx.ingest record: how many fields the HTTP edge masked (see fabric.pipeline.redact)
REDACTED_HEADER = "fabric_redacted"
