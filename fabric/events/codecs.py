"""Codecs: the three ways an event can arrive on ``ctx.ingest``, and the canonical form.

Ingest formats, told apart by their first bytes and headers:

1. Confluent wire format: magic byte 0, a 4-byte big-endian schema id, Avro body.
   Id 1 is the generic envelope (``data`` = JSON bytes); the typed envelope ids are in
   ``fabric/schemas/registry/context-types.yaml``.
2. CloudEvents binary mode: attributes in ``ce_*`` headers, the value is ``data``
   (JSON, or Confluent-framed Avro of the bare data record with ``content-type:
   application/avro``).
3. CloudEvents structured mode: the value is the JSON envelope.

Everything that fails raises ``InvalidEvent`` naming the problem and a JSON pointer;
the worker turns that into a DLQ record, never into a crash.

The canonical form on the typed topics is the Confluent-framed typed envelope, so
Schema-Catalogue-aware tools can read the fabric's topics.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import fastavro
import msgspec

from fabric.errors import InvalidEvent
from fabric.events.catalogue import GENERIC_SCHEMA_ID, Catalogue, ContextType
from fabric.events.envelope import ATTRIBUTES, Envelope

MAGIC = 0
_HEADER = struct.Struct(">bI")
_envelope_decoder = msgspec.json.Decoder(Envelope)
_PATH = re.compile(r" - at `\$(.*)`$")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: What a tenant may be called: it becomes part of Redis keys and Kafka keys.
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # use fullmatch: "$" lets a trailing newline in

Headers = Sequence[tuple[str, bytes]]


def pointer_of(error: msgspec.ValidationError | msgspec.DecodeError, prefix: str = "") -> tuple[str, str]:
    """Split a msgspec error into (reason, JSON pointer): ``$.a[0].b`` -> ``/a/0/b``."""
    msg = str(error)
    m = _PATH.search(msg)
    if not m:
        return msg, prefix
    parts = []
    for a, b in _SEGMENT.findall(m.group(1)):
        if b == "...":  # msgspec does not name map keys: point at the map itself
            break
        parts.append(a or b)
    return msg[: m.start()], prefix + "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def confluent_frame(schema_id: int, body: bytes) -> bytes:
    return _HEADER.pack(MAGIC, schema_id) + body


def avro_encode(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def _avro_decode(schema: Any, body: bytes, what: str, reader: Any = None) -> dict[str, Any]:
    """Decode with the writer's ``schema``, resolved to ``reader`` when that differs."""
    try:
        buf = io.BytesIO(body)
        out: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]
            buf, schema, reader if reader is not None and reader is not schema else None
        )
        if buf.tell() != len(body):
            raise InvalidEvent(f"{what}: {len(body) - buf.tell()} trailing bytes after the record")
        return out
    except InvalidEvent:
        raise
    except (EOFError, StopIteration, IndexError, ValueError, OverflowError, UnicodeDecodeError, TypeError) as e:
        raise InvalidEvent(f"{what}: Avro body does not match the schema ({type(e).__name__}: {e})") from e


def _unframe(value: bytes, what: str) -> tuple[int, bytes]:
    if len(value) < 5 or value[0] != MAGIC:
        raise InvalidEvent(f"{what}: not in the Confluent wire format (magic byte 0 + schema id)")
    _, schema_id = _HEADER.unpack_from(value)
    return schema_id, value[5:]


def _from_avro_record(rec: dict[str, Any], data: bytes) -> Envelope:
    attrs = {k: rec.get(k) for k in ATTRIBUTES if rec.get(k) is not None}
    try:
        env = msgspec.convert(attrs, Envelope)
    except msgspec.ValidationError as e:
        reason, ptr = pointer_of(e)
        raise InvalidEvent(reason, ptr) from e
    return msgspec.structs.replace(env, data=msgspec.Raw(data))


def decode_confluent(value: bytes, catalogue: Catalogue) -> Envelope:
    schema_id, body = _unframe(value, "Avro event")
    if schema_id == GENERIC_SCHEMA_ID:
        rec = _avro_decode(catalogue.schemas.envelope, body, "generic envelope")
        data = rec["data"]
        return _from_avro_record(rec, data if data else b"null")
    ct = catalogue.by_schema_id.get(schema_id)
    if ct is None:
        raise InvalidEvent(f"unknown schema id {schema_id} in the Confluent header", "")
    writer, reader = catalogue.typed_writers[schema_id], catalogue.schemas.avro(ct.name)
    rec = _avro_decode(writer, body, f"{ct.name} envelope", reader)
    return _from_avro_record(rec, msgspec.json.encode(rec["data"]))


def decode_binary(value: bytes | None, headers: Headers, catalogue: Catalogue) -> Envelope:
    attrs: dict[str, Any] = {}
    content_type = None
    for k, v in headers:
        try:
            text = v.decode()
        except UnicodeDecodeError as e:
            raise InvalidEvent(f"header {k!r} is not valid UTF-8", "") from e
        lk = k.lower()
        if lk.startswith("ce_"):
            name = lk[3:]
            if name in ATTRIBUTES:
                attrs[name] = text
        elif lk == "content-type":
            content_type = text
    try:
        env = msgspec.convert(attrs, Envelope, strict=False)
    except msgspec.ValidationError as e:
        reason, ptr = pointer_of(e)
        raise InvalidEvent(f"CloudEvents headers: {reason}", ptr) from e
    if content_type and "avro" in content_type:
        schema_id, body = _unframe(value or b"", "Avro data")
        ct = catalogue.by_data_schema_id.get(schema_id)
        if ct is None:
            raise InvalidEvent(f"unknown data schema id {schema_id} in the Confluent header", "/data")
        writer, reader = catalogue.data_writers[schema_id], catalogue.schemas.data_avro(ct.name)
        rec = _avro_decode(writer, body, f"{ct.name} data", reader)
        data = msgspec.json.encode(rec)
    else:
        data = value if value else b"null"
    return msgspec.structs.replace(env, data=msgspec.Raw(data))


def _json_decoded(decoder: msgspec.json.Decoder[Any], value: Any, at: str = "") -> Any:
    """``value`` decoded; any problem becomes an InvalidEvent pointing at ``at``."""
    what = f"{at[1:]} is" if at else "JSON is"
    try:
        return decoder.decode(value)
    except msgspec.ValidationError as e:
        reason, ptr = pointer_of(e, at)
        raise InvalidEvent(reason, ptr) from e
    except msgspec.DecodeError as e:
        # msgspec >= 0.23 reports bad UTF-8 as a decode error, not a UnicodeDecodeError
        problem = "not valid UTF-8" if "UTF-8" in str(e) else "not valid JSON"
        raise InvalidEvent(f"{at[1:] + ' is ' if at else ''}{problem}: {e}", at) from e
    except RecursionError as e:
        raise InvalidEvent(f"{what} nested too deeply", at) from e
    except UnicodeDecodeError as e:
        raise InvalidEvent(f"{at[1:] + ' is ' if at else ''}not valid UTF-8: {e}", at) from e


def decode_structured(value: bytes) -> Envelope:
    envelope: Envelope = _json_decoded(_envelope_decoder, value)
    return envelope


def decode_ingest(value: bytes | None, headers: Headers, catalogue: Catalogue) -> Envelope:
    """Decode one ``ctx.ingest`` record in whichever of the three formats it is."""
    if any(k.lower() in ("ce_specversion", "ce_id") for k, _ in headers):
        return decode_binary(value, headers, catalogue)
    if not value:
        raise InvalidEvent("empty message and no ce_* headers", "")
    if value[0] == MAGIC:
        return decode_confluent(value, catalogue)
    return decode_structured(value)


def validate(env: Envelope, catalogue: Catalogue) -> tuple[ContextType, Any]:
    """Check an envelope against its context type; returns the type and the decoded data."""
    if not TENANT.fullmatch(env.tenant):
        raise InvalidEvent("tenant must be 1-64 of A-Z a-z 0-9 _ . - (not starting with _ . -)", "/tenant")
    if not env.subject:
        raise InvalidEvent("subject must not be empty", "/subject")
    ct = catalogue.resolve(env.type)
    return ct, _json_decoded(catalogue.schemas.data_decoder(ct.name), env.data, "/data")


def micros(t: datetime) -> int:
    """Microseconds since the epoch of an aware (or UTC-naive) datetime."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // _ONE_MICRO


_ONE_MICRO = datetime.resolution


def encode_typed(env: Envelope, ct: ContextType, data: Any, catalogue: Catalogue) -> bytes:
    """The canonical typed-topic form: Confluent-framed Avro of the typed envelope."""
    rec = msgspec.structs.asdict(env)
    rec["data"] = msgspec.to_builtins(data, builtin_types=(datetime,))
    # microseconds, not datetimes: fastavro takes them as they are, skipping a conversion
    rec["time"] = micros(env.time) if env.time else 0
    if env.receivedtime is not None:
        rec["receivedtime"] = micros(env.receivedtime)
    return confluent_frame(catalogue.typed_id[ct.name], avro_encode(catalogue.schemas.avro(ct.name), rec))


def decode_typed(value: bytes, catalogue: Catalogue) -> tuple[ContextType, dict[str, Any]]:
    """Decode a typed-topic record to (context type, plain dict with ``data`` as a dict)."""
    schema_id, body = _unframe(value, "typed event")
    ct = catalogue.by_schema_id.get(schema_id)
    if ct is None:
        raise InvalidEvent(f"unknown schema id {schema_id} on a typed topic")
    writer, reader = catalogue.typed_writers[schema_id], catalogue.schemas.avro(ct.name)
    return ct, _avro_decode(writer, body, f"{ct.name} envelope", reader)
