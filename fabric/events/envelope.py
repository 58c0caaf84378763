"""The event envelope: CloudEvents 1.0 attributes plus the fabric's extensions.

In memory it is a ``msgspec.Struct``; ``data`` stays as raw JSON bytes
(``msgspec.Raw``) until its context type's decoder validates it, so an event is
parsed once and re-emitted without re-encoding its payload.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

Sensitivity = Literal["public", "internal", "confidential", "restricted"]
#: sensitivity levels in increasing order; the cache stores the index
LEVELS: tuple[str, ...] = ("public", "internal", "confidential", "restricted")
LEVEL = {name: i for i, name in enumerate(LEVELS)}

#: CloudEvents attributes and fabric extensions, in the order the Avro schema lists them.
ATTRIBUTES = (
    "id", "source", "specversion", "type", "subject", "time", "tenant",
    "datacontenttype", "dataschema", "correlationid", "traceparent",
    "sensitivity", "sequence", "provider", "contexttype", "receivedtime",
)  # fmt: skip


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One context change. ``tenant`` is required; ``sequence`` orders versions of a subject."""

    id: str
    source: str
    type: str
    subject: str
    tenant: str
    specversion: str = "1.0"
    time: datetime | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    correlationid: str | None = None
    traceparent: str | None = None
    sensitivity: Sensitivity = "internal"
    sequence: int | None = None
    provider: str | None = None
    contexttype: str | None = None
    receivedtime: datetime | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")

    def payload(self) -> Any:
        """The data decoded to plain Python objects."""
        return msgspec.json.decode(self.data)

    def key(self) -> bytes:
        """Kafka key: every version of a subject lands on one partition, in order."""
        return f"{self.tenant}/{self.subject}".encode()


def make_event(
    type: str,
    subject: str,
    data: Any,
    *,
    tenant: str,
    source: str,
    id: str | None = None,
    **attrs: Any,
) -> Envelope:
    """Build an envelope from Python data (a convenience for providers and tests)."""
    import uuid

    return Envelope(
        id=id or uuid.uuid4().hex,
        source=source,
        type=type,
        subject=subject,
        tenant=tenant,
        data=msgspec.Raw(msgspec.json.encode(data)),
        **attrs,
    )


_json_encoder = msgspec.json.Encoder()


def to_json(event: Envelope) -> bytes:
    """CloudEvents structured-mode JSON."""
    return _json_encoder.encode(event)
