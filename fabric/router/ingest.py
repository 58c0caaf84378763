"""``POST /v1/events``: one CloudEvent, a JSON array of them, or NDJSON.

Each event is checked against its context type's JSON Schema (derived from Avro);
the valid ones are produced to ``ctx.ingest`` and acknowledged by the broker before
the answer, the invalid ones are named with the JSON pointer of the violation.
Answers: 202 all accepted, 207 some accepted, 400 none accepted, 413 body too large,
503 the broker did not take the events (nothing was accepted, retry).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jsonschema
import msgspec
import orjson
from aiokafka.errors import KafkaError
from starlette.requests import Request
from starlette.responses import Response

from fabric.errors import InvalidEvent, UnknownEventType
from fabric.pipeline.route import PROVIDER_HEADER
from fabric.router import bodies
from fabric.router.state import HTTPProblem, caller, state_of
from fabric.topics.codecs import decode_structured, validate
from fabric.topics.registry import Registry


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

    def __init__(self, registry: Registry, max_event_bytes: int) -> None:
        self.registry = registry
        self.max_event_bytes = max_event_bytes
        self._validators: dict[tuple[str, int], jsonschema.Draft202012Validator] = {}

    def validator(self, name: str) -> jsonschema.Draft202012Validator:
        """The validator of a context type's current schema version (rebuilt when it evolves)."""
        key = (name, self.registry.version[name])
        v = self._validators.get(key)
        if v is None:
            v = self._validators[key] = jsonschema.Draft202012Validator(
                self.registry.schemas.json_schema(name), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
        return v

    def check(self, index: int, event: Any, tenant: str, size: int) -> Rejected | None:
        """None when the event is valid (see ``accept``)."""
        outcome = self.accept(index, event, tenant, size)
        return None if isinstance(outcome, bytes) else outcome

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
            ct = self.registry.resolve(etype)
        except UnknownEventType as e:
            return Rejected(index, f"/{index}/type", e.reason, ev_id)
        try:
            encoded = orjson.dumps(event)
        except orjson.JSONEncodeError as e:
            return Rejected(index, f"/{index}", f"event cannot be encoded: {e}", ev_id)
        try:
            validate(decode_structured(encoded), self.registry)
            return encoded
        except InvalidEvent as worker_says:
            error = jsonschema.exceptions.best_match(self.validator(ct.name).iter_errors(event))
            if error is not None:
                return Rejected(index, _pointer(index, error.absolute_path), error.message, ev_id)
            return Rejected(index, f"/{index}{worker_says.pointer}", worker_says.reason, ev_id)


async def split_body(body: bytes, content_type: str, max_events: int) -> list[tuple[Any, int] | Rejected]:
    """Parse the body into (event, size) items, or Rejected for lines that are not JSON.
    Splitting is bounded (``bodies``); parsing yields to the loop every few milliseconds."""
    stripped = body.lstrip()
    if not stripped:
        raise HTTPProblem(400, "empty body: send a CloudEvent, a JSON array of them, or NDJSON")
    ndjson = "ndjson" in content_type or "jsonl" in content_type
    if not ndjson and stripped[:1] == b"{" and b"\n" in stripped.rstrip():
        try:  # one pretty-printed object, or several objects one per line
            return [(orjson.loads(body), len(body))]
        except (orjson.JSONDecodeError, RecursionError):
            ndjson = True
    try:
        raws = await bodies.split_off_loop(body, ndjson, max_events)
    except bodies.TooMany as e:
        raise HTTPProblem(413, str(e)) from None
    except ValueError as e:
        raise HTTPProblem(400, f"body is not valid JSON: {e}") from None
    items: list[tuple[Any, int] | Rejected] = []
    pause = Pause()
    for i, raw in enumerate(raws):
        await pause()
        try:
            items.append((orjson.loads(raw), len(raw)))
        except (orjson.JSONDecodeError, RecursionError) as e:
            if not ndjson and len(raws) == 1:
                raise HTTPProblem(400, f"body is not valid JSON: {e}") from None
            items.append(Rejected(i, f"/{i}", f"{'line' if ndjson else 'element'} {i + 1} is not valid JSON: {e}"))
    return items


class Pause:
    """Awaited in a loop over many items: yields to the event loop once ``every_s`` has passed."""

    def __init__(self, every_s: float = 0.002) -> None:
        self.every = every_s
        self.since = time.perf_counter()

    async def __call__(self) -> None:
        if time.perf_counter() - self.since > self.every:
            await asyncio.sleep(0)
            self.since = time.perf_counter()


async def post_events(request: Request) -> Response:
    st = state_of(request)
    who, trace = await caller(request, "events.write", "events")
    st.gate.require(who, "events:write", "events.write", "events", trace)
    tenant = who.tenant
    limits = st.settings.router
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"body is {declared[:20]} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    items = await split_body(body, request.headers.get("content-type", ""), limits.max_events_per_request)
    accepted: list[tuple[str, bytes, bytes]] = []
    rejected: list[Rejected] = []
    refused = 0
    pause = Pause()
    for i, item in enumerate(items):
        await pause()
        outcome = item if isinstance(item, Rejected) else st.validator.accept(i, item[0], tenant, item[1])
        if isinstance(outcome, Rejected):
            refused += 1
            if len(rejected) < limits.max_rejections_listed:
                rejected.append(outcome)
        else:
            event = item[0]  # type: ignore[index]
            accepted.append((event["id"], f"{tenant}/{event['subject']}".encode(), outcome))
    del items
    if accepted:
        topic = st.settings.topic("ingest")
        headers = [(PROVIDER_HEADER, b"http")]
        try:
            futures = [await st.producer.send(topic, v, key=k, headers=headers) for _, k, v in accepted]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=st.settings.router.produce_timeout_s)
        except (KafkaError, TimeoutError) as e:
            raise HTTPProblem(
                503,
                f"the broker did not acknowledge the events ({type(e).__name__}); retry: "
                "a resent event with the same id and sequence is applied once",
                {"Retry-After": "1"},
            ) from None
    status = 202 if not refused else (207 if accepted else 400)
    st.gate.allow(who, "events.write", "events", trace, f"{status} {len(accepted)} accepted, {refused} rejected")
    result = IngestResult([a[0] for a in accepted], rejected, refused)
    return Response(msgspec.json.encode(result), status_code=status, media_type="application/json")
