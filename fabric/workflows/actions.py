"""What a step does to another system: an HTTP call, an MCP tool call, a Kafka record, or
an event back into the fabric. Every one carries the step's idempotency key.

Failures are sorted into the kinds a workflow's ``retry.on`` and ``error_handling``
speak of (``StepFailed.kind``): ``timeout``; ``unavailable`` (refused, unreachable,
HTTP 502/503/504, an open circuit); ``server_error`` (other 5xx); ``rejected`` (4xx,
an MCP tool error, a template with no value, a criterion that does not hold: the
system said no, and asking again will not change that); ``refused`` (the access rules
kept the step from running).

HTTP bodies are signed: ``X-Fabric-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>">`` with the system's signing secret, so the target can check the call came
from this fabric and was not replayed long after (docs/workflows.md shows the check).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from fabric.errors import FabricError
from fabric.events.times import iso_ms
from fabric.workflows.runs import RunState
from fabric.workflows.systems import Reach, System, secret

MAX_RESPONSE_BYTES = 1 << 20


class StepFailed(FabricError):
    """A step's attempt failed; ``kind`` says how (see the module)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.retriable = kind in ("timeout", "unavailable", "server_error")


def _bounded_json(raw: bytes, status: int) -> Any:
    try:
        return orjson.loads(raw) if raw else {"status": status}
    except orjson.JSONDecodeError:
        return {"status": status, "text": raw[:2000].decode(errors="replace")}


class Actions:
    """Runs actions for the workflow stage: one HTTP client, the stage's producer."""

    def __init__(
        self, producer: AIOKafkaProducer, ingest_topic: str, own_prefix: str, reach: Reach,
        signature_header: str = "X-Fabric-Signature",
    ) -> None:  # fmt: skip
        self.producer = producer
        self.ingest_topic = ingest_topic
        self.own_prefix = own_prefix
        self.reach = reach
        self.signature_header = signature_header
        self.http = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        #: system key -> (its max_in_flight, the bulkhead); one entry per registered system
        self._bulkheads: dict[str, tuple[int, asyncio.Semaphore]] = {}

    def bulkhead(self, system: System) -> asyncio.Semaphore:
        """The turns for calls to ``system`` (``max_in_flight`` at once)."""
        n = system.spec.max_in_flight
        got = self._bulkheads.get(system.key)
        if got is None or got[0] != n:
            got = self._bulkheads[system.key] = (n, asyncio.Semaphore(n))
        return got[1]

    async def close(self) -> None:
        await self.http.aclose()

    def _auth(self, system: System) -> dict[str, str]:
        a = system.spec.auth
        if a.type == "bearer" and a.secret:
            return {"Authorization": f"Bearer {secret(system.tenant, a.secret)}"}
        return {}

    async def http_call(
        self, system: System, method: str, path: str, body: Any, key: str, run: RunState, timeout_s: float
    ) -> Any:
        self.reach.check(system.spec.endpoint)
        raw = orjson.dumps(body) if body is not None else b""
        headers = {"Idempotency-Key": key, "Content-Type": "application/json", "X-Fabric-Run": run.run_id,
                   "X-Fabric-Workflow": f"{run.workflow}@{run.version}", **self._auth(system)}  # fmt: skip
        if system.spec.signing_secret:
            ts = str(int(time.time()))
            mac = hmac.new(secret(system.tenant, system.spec.signing_secret).encode(), f"{ts}.".encode() + raw,
                           hashlib.sha256).hexdigest()  # fmt: skip
            headers[self.signature_header] = f"t={ts},v1={mac}"
        url = system.spec.endpoint.rstrip("/") + path
        try:
            async with asyncio.timeout(timeout_s):
                async with self.http.stream(method, url, content=raw or None, headers=headers) as r:
                    got = bytearray()
                    async for chunk in r.aiter_bytes():
                        got += chunk
                        if len(got) > MAX_RESPONSE_BYTES:
                            raise StepFailed("rejected", f"{system.id} answered more than {MAX_RESPONSE_BYTES} bytes")
                    status = r.status_code
        except TimeoutError:
            raise StepFailed("timeout", f"{system.id} did not answer {method} {path} within {timeout_s:g} s") from None
        except httpx.HTTPError as e:
            raise StepFailed("unavailable", f"{system.id} unreachable: {type(e).__name__}: {e}") from None
        result = _bounded_json(bytes(got), status)
        if status in (502, 503, 504):
            raise StepFailed("unavailable", f"{system.id} answered {status} to {method} {path}")
        if status >= 500:
            raise StepFailed("server_error", f"{system.id} answered {status} to {method} {path}")
        if status >= 400:
            raise StepFailed("rejected", f"{system.id} answered {status} to {method} {path}: {_short(result)}")
        return result

    async def mcp_call(self, system: System, tool: str, arguments: dict[str, Any], key: str, timeout_s: float) -> Any:
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client
        from mcp.shared.exceptions import MCPError

        self.reach.check(system.spec.endpoint)
        headers = {"Idempotency-Key": key, **self._auth(system)}
        try:
            async with asyncio.timeout(timeout_s):
                async with create_mcp_http_client(headers=headers) as http:
                    async with Client(streamable_http_client(system.spec.endpoint, http_client=http)) as client:
                        result = await client.call_tool(tool, arguments, meta={"idempotency_key": key})  # type: ignore[arg-type]
        except TimeoutError:
            raise StepFailed("timeout", f"{system.id} did not answer tool {tool} within {timeout_s:g} s") from None
        except MCPError as e:
            raise StepFailed("rejected", f"{system.id} tool {tool}: {e}") from None
        except (httpx.HTTPError, OSError) as e:
            raise StepFailed("unavailable", f"{system.id} unreachable: {type(e).__name__}: {e}") from None
        except BaseExceptionGroup as eg:  # the SDK's task groups wrap transport errors
            first = eg.exceptions[0] if eg.exceptions else eg
            if isinstance(first, httpx.HTTPStatusError) and first.response.status_code in (401, 403):
                raise StepFailed(
                    "rejected", f"{system.id} refused the credentials ({first.response.status_code})"
                ) from None
            raise StepFailed("unavailable", f"{system.id} unreachable: {type(first).__name__}: {first}") from None
        return tool_result(system.id, tool, result)

    async def kafka_record(self, topic: str, key: str | None, value: Any, idem: str) -> Any:
        if topic.startswith(self.own_prefix):
            raise StepFailed(
                "refused", f"topic {topic!r} is one of the fabric's own (events go in with an event action)"
            )
        meta = await self.producer.send_and_wait(
            topic, orjson.dumps(value), key=key.encode() if key is not None else None,
            headers=[("idempotency-key", idem.encode())],
        )  # fmt: skip
        return {"topic": topic, "partition": meta.partition, "offset": meta.offset}

    async def fabric_event(self, run: RunState, etype: str, subject: str, data: dict[str, Any], key: str) -> Any:
        await publish_event(self.producer, self.ingest_topic, run, etype, subject, data, key)
        return {"id": key, "type": etype, "subject": subject}


def _short(v: Any) -> str:
    text = v if isinstance(v, str) else orjson.dumps(v).decode()
    return text[:300]


def tool_result(system: str, tool: str, result: Any) -> Any:
    """An MCP tool's answer: its structured content, else its text (as JSON when it is)."""
    texts = [getattr(c, "text", "") for c in getattr(result, "content", []) or []]
    if getattr(result, "is_error", False):
        raise StepFailed("rejected", f"{system} tool {tool} failed: {' '.join(texts)[:300]}")
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        return structured
    if len(texts) == 1:
        try:
            return orjson.loads(texts[0])
        except orjson.JSONDecodeError:
            return {"text": texts[0]}
    return {"text": texts}


async def publish_event(
    producer: AIOKafkaProducer, topic: str, run: RunState, etype: str, subject: str, data: dict[str, Any], event_id: str
) -> None:
    """An event of the run's tenant into ``ctx.ingest`` (it is validated and routed as any other)."""
    now = time.time_ns() // 1000  # the sequence in microseconds, as the router stamps it
    body = {"id": event_id, "specversion": "1.0", "source": f"fabric://workflows/{run.workflow}", "type": etype,
            "subject": subject, "tenant": run.tenant, "time": iso_ms(now // 1000), "sequence": now,
            "correlationid": run.run_id, "data": data}  # fmt: skip
    await producer.send_and_wait(topic, orjson.dumps(body), key=f"{run.tenant}/{subject}".encode())
