"""Context in the schema version a consumer declared (Avro schema resolution).

A consumer manifest may pin a context type to an older version. Its pulls, pushes,
MCP reads and assembled items then carry the event's ``data`` resolved from the
current schema to that version: fields added since are dropped, fields removed since
come back with their defaults. The event says which version it is in
(``schemaversion``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import fastavro
import orjson

from fabric.registry.store import SchemaStore

log = logging.getLogger(__name__)

Convert = Callable[[bytes], bytes]


def converter(store: SchemaStore, tenant: str, consumer: str, context_type: str) -> Convert | None:
    """A function turning cached event JSON into the version the consumer (``sub``) of
    ``tenant`` declared, or None when it declared none (or the current one)."""
    want = store.consumer_version(tenant, consumer, context_type)
    reg = store.catalogue
    if want is None or context_type not in reg.version or want == reg.version[context_type]:
        return None
    reader = reg.data_versions[context_type].get(want)
    if reader is None:
        return None
    writer = reg.schemas.data_avro(context_type)

    def convert(event_json: bytes) -> bytes:
        ev: dict[str, Any] = orjson.loads(event_json)
        try:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer, ev.get("data"))
            buf.seek(0)
            ev["data"] = fastavro.schemaless_reader(buf, writer, reader)
            ev["schemaversion"] = want
        except (ValueError, TypeError, KeyError, fastavro.read.SchemaResolutionError) as e:
            log.warning("cannot convert a %s event to version %d: %s", context_type, want, e)
            ev["schemaversion"] = reg.version[context_type]
        return orjson.dumps(ev)

    return convert
