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

import msgspec
import orjson
from aiokafka.errors import KafkaError
from starlette.requests import Request
from starlette.responses import Response

from fabric.events.headers import PROVIDER_HEADER, REDACTED_HEADER
from fabric.router import bodies
from fabric.router.edge import IngestResult, Rejected
from fabric.router.problems import HTTPProblem
from fabric.router.state import caller, state_of

#: larger events are masked on a worker thread, so the event loop keeps its turns
REDACT_INLINE_BYTES = 64 * 1024


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
    body = await bodies.read(request, limits.max_body_bytes)
    items = await split_body(body, request.headers.get("content-type", ""), limits.max_events_per_request)
    accepted: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
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
            if len(outcome) > REDACT_INLINE_BYTES:
                value, masked = await asyncio.to_thread(st.validator.redact, event, outcome)
            else:
                value, masked = st.validator.redact(event, outcome)
            headers = [(PROVIDER_HEADER, b"http")] + ([(REDACTED_HEADER, b"%d" % masked)] if masked else [])
            accepted.append((event["id"], f"{tenant}/{event['subject']}".encode(), value, headers))
    del items
    if accepted:
        topic = st.settings.topic("ingest")
        try:
            futures = [await st.producer.send(topic, v, key=k, headers=h) for _, k, v, h in accepted]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=st.settings.router.produce_timeout_s)
        except (KafkaError, TimeoutError) as e:
            raise HTTPProblem(
                503,
                f"the broker did not acknowledge the events ({type(e).__name__}); retry: "
                "a resent event with the same id and sequence is applied once",
                {"Retry-After": "1"},
            ) from None
    status = 202 if not refused else (207 if accepted else 400)
    st.gate.record_allowed(
        who, "events.write", "events", trace, f"{status} {len(accepted)} accepted, {refused} rejected"
    )
    result = IngestResult([a[0] for a in accepted], rejected, refused)
    return Response(msgspec.json.encode(result), status_code=status, media_type="application/json")
