"""The edge's check of one event: the worker's own decoder decides, JSON Schema explains."""

from __future__ import annotations

from typing import Any

import jsonschema
import msgspec
import orjson

from fabric.errors import InvalidEvent, UnknownEventType
from fabric.events.catalogue import Catalogue
from fabric.events.codecs import decode_structured, validate
from fabric.pipeline.redact import Redaction


class Rejected(msgspec.Struct):
    index: int
    pointer: str
    error: str
    id: str | None = None


class IngestResult(msgspec.Struct):
    accepted: list[str]
    #: the first ``router.max_rejections_listed`` refused events, each named
    rejected: list[Rejected]
    #: how many were refused in all
    rejected_count: int = 0


def _pointer(index: int, path: Any) -> str:
    parts = "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)
    return f"/{index}{parts}"


class EdgeValidator:
    """Precompiled JSON-Schema validators, one per context type."""

    def __init__(self, catalogue: Catalogue, max_event_bytes: int, redaction: Redaction | None = None) -> None:
        self.catalogue = catalogue
        self.max_event_bytes = max_event_bytes
        self.redaction = redaction
        self._validators: dict[tuple[str, int], jsonschema.Draft202012Validator] = {}

    def validator(self, name: str) -> jsonschema.Draft202012Validator:
        """The validator of a context type's current schema version (rebuilt when it evolves)."""
        key = (name, self.catalogue.version[name])
        v = self._validators.get(key)
        if v is None:
            v = self._validators[key] = jsonschema.Draft202012Validator(
                self.catalogue.schemas.json_schema(name), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
        return v

    def check(self, index: int, event: Any, tenant: str, size: int) -> Rejected | None:
        """None when the event is valid (see ``accept``)."""
        outcome = self.accept(index, event, tenant, size)
        return None if isinstance(outcome, bytes) else outcome

    def redact(self, event: dict[str, Any], encoded: bytes) -> tuple[bytes, int]:
        """A valid event's JSON with its data masked by the redaction rules, and how many
        fields were masked (the route stage adds it to the event's ``redacted``)."""
        if self.redaction is None:
            return encoded, 0
        ct = self.catalogue.resolve(event["type"])
        data, n = self.redaction.mask(ct.name, str(event.get("sensitivity", "internal")), encoded, event.get("data"))
        if not n:
            return encoded, 0
        return orjson.dumps({**event, "data": data}), n

    def accept(self, index: int, event: Any, tenant: str, size: int) -> Rejected | bytes:
        """The event's JSON to produce when it is valid; fills in the caller's tenant when absent.

        The worker's own decoder (msgspec, fast) decides, so the edge accepts exactly
        what the worker will; JSON Schema then explains a refusal with a readable
        message and the JSON pointer of the violation."""
        if size > self.max_event_bytes:
            return Rejected(index, f"/{index}", f"event is {size} bytes, over the limit of {self.max_event_bytes}")
        if not isinstance(event, dict):
            return Rejected(index, f"/{index}", f"an event must be a JSON object, got {type(event).__name__}")
        ev_id = event.get("id") if isinstance(event.get("id"), str) else None
        given = event.setdefault("tenant", tenant)
        if given != tenant:
            return Rejected(index, f"/{index}/tenant", "tenant differs from the caller's tenant", ev_id)
        etype = event.get("type")
        if not isinstance(etype, str):
            return Rejected(index, f"/{index}/type", "'type' is required and must be a string", ev_id)
        try:
            ct = self.catalogue.resolve(etype)
        except UnknownEventType as e:
            return Rejected(index, f"/{index}/type", e.reason, ev_id)
        try:
            encoded = orjson.dumps(event)
        except orjson.JSONEncodeError as e:
            return Rejected(index, f"/{index}", f"event cannot be encoded: {e}", ev_id)
        try:
            validate(decode_structured(encoded), self.catalogue)
            return encoded
        except InvalidEvent as worker_says:
            error = jsonschema.exceptions.best_match(self.validator(ct.name).iter_errors(event))
            if error is not None:
                return Rejected(index, _pointer(index, error.absolute_path), error.message, ev_id)
            return Rejected(index, f"/{index}{worker_says.pointer}", worker_says.reason, ev_id)
