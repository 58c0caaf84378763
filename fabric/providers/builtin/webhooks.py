"""SaaS webhooks into SaaSRecord: an HTTP receiver that checks each delivery's HMAC signature.

``POST /hooks/{system}`` with a JSON body ``{"object": "Account", "record_id": "A-1",
"fields": {...}, "action": "updated", "url": ...}`` (or a list of them) and the headers

- ``X-Fabric-Delivery: <unique id of this delivery>`` (as GitHub's ``X-GitHub-Delivery``)
- ``X-Fabric-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<delivery>.<raw body>">``
  with the system's secret (Stripe's scheme: the time and the delivery id are signed too).

A missing, malformed or wrong signature is 401 and nothing is published; so is one
whose time is more than ``tolerance_s`` away from now (a replay of an old delivery), and
a delivery id seen before is answered 200 ``{"duplicate": true}`` without publishing
again (a replay within the window, or the sender's own retry). The body is refused with
413 past ``max_body_bytes`` before it is read. A body that does not fit is 400 naming the
field; accepted deliveries answer 202 once the broker has them.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fabric.errors import InvalidEvent, PublishError
from fabric.events.envelope import Envelope
from fabric.providers.sdk import Provider

SIGNATURE = "x-fabric-signature"
DELIVERY = "x-fabric-delivery"


def sign(secret: bytes, body: bytes, delivery: str, at: int | None = None) -> dict[str, str]:
    """The headers a sender puts on a delivery."""
    at = int(time.time()) if at is None else at
    mac = hmac.new(secret, f"{at}.{delivery}.".encode() + body, hashlib.sha256).hexdigest()
    return {SIGNATURE: f"t={at},v1={mac}", DELIVERY: delivery}


def verify(secret: bytes, body: bytes, signature: bytes, delivery: bytes, tolerance_s: float) -> str | None:
    """Why the delivery is refused (None: it is good). Headers are compared as bytes."""
    parts = dict(p.partition(b"=")[::2] for p in signature.split(b","))
    at, mac = parts.get(b"t", b""), parts.get(b"v1", b"")
    if not at.isdigit() or len(at) > 12 or not mac or not delivery or len(delivery) > 200:
        return f"missing or malformed {SIGNATURE} (t=<unix seconds>,v1=<hex>) or {DELIVERY}"
    expected = hmac.new(secret, at + b"." + delivery + b"." + body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(mac, expected):
        return f"wrong {SIGNATURE}"
    if abs(time.time() - int(at)) > tolerance_s:
        return f"the signed time is more than {tolerance_s:.0f} s from now (a replayed delivery?)"
    return None


class Deliveries:
    """Delivery ids seen within the tolerance window (older ones are refused by time anyway)."""

    def __init__(self, window_s: float, limit: int = 100_000) -> None:
        self.window = window_s
        self.limit = limit
        self.seen: OrderedDict[bytes, float] = OrderedDict()

    def first_time(self, delivery: bytes) -> bool:
        now = time.monotonic()
        while self.seen and (len(self.seen) >= self.limit or next(iter(self.seen.values())) < now - 2 * self.window):
            self.seen.popitem(last=False)
        if delivery in self.seen:
            return False
        self.seen[delivery] = now
        return True

    def forget(self, delivery: bytes) -> None:
        self.seen.pop(delivery, None)


def record_event(provider: Provider, system: str, item: Any, index: int) -> Envelope:
    if not isinstance(item, dict):
        raise InvalidEvent("each delivery must be a JSON object", f"/{index}")
    for key in ("object", "record_id"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise InvalidEvent(f"{key} must be a non-empty string", f"/{index}/{key}")
    fields = item.get("fields") or {}
    if not isinstance(fields, dict):
        raise InvalidEvent("fields must be an object", f"/{index}/fields")
    action = str(item.get("action") or "updated")
    data = {"system": system, "object": item["object"], "record_id": item["record_id"], "fields": fields,
            "url": item.get("url")}  # fmt: skip
    attrs: dict[str, Any] = {}
    if isinstance(item.get("id"), str):
        attrs["id"] = item["id"]
    if isinstance(item.get("sequence"), int):
        attrs["sequence"] = item["sequence"]
    etype = f"saas.{item['object'].lower()}.{action}"
    return provider.event(etype, item["record_id"], data, **attrs)


def webhook_app(
    provider: Provider, secrets: dict[str, bytes], *, max_body_bytes: int = 1 << 20, tolerance_s: float = 300.0
) -> Starlette:
    seen = Deliveries(tolerance_s)

    async def receive(request: Request) -> JSONResponse:
        system = request.path_params["system"]
        secret = secrets.get(system)
        if secret is None:
            return JSONResponse({"error": f"no secret for system {system[:64]!r}"}, 401)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return JSONResponse({"error": f"body is over {max_body_bytes} bytes"}, 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return JSONResponse({"error": f"body is over {max_body_bytes} bytes"}, 413)
            chunks.append(chunk)
        body = b"".join(chunks)
        headers = dict(request.scope["headers"])
        delivery = headers.get(DELIVERY.encode(), b"")
        refused = verify(secret, body, headers.get(SIGNATURE.encode(), b""), delivery, tolerance_s)
        if refused:
            return JSONResponse({"error": f"{refused} for system {system[:64]!r}"}, 401)
        if not seen.first_time(delivery):
            return JSONResponse({"duplicate": True, "delivery": delivery.decode(errors="replace")}, 200)
        try:
            doc = orjson.loads(body)
            items = doc if isinstance(doc, list) else [doc]
            events = [record_event(provider, system, item, i) for i, item in enumerate(items)]
            for ev in events:
                provider.check(ev)
        except orjson.JSONDecodeError as e:
            seen.forget(delivery)
            return JSONResponse({"error": f"body is not JSON: {e}"}, 400)
        except InvalidEvent as e:
            seen.forget(delivery)
            return JSONResponse({"error": str(e), "pointer": e.pointer}, 400)
        try:
            report = await provider.publish_many(events)
        except PublishError as e:
            seen.forget(delivery)  # the sender retries it
            return JSONResponse({"error": str(e)}, 503, headers={"Retry-After": "1"})
        return JSONResponse({"accepted": report.sent}, 202)

    return Starlette(routes=[Route("/hooks/{system}", receive, methods=["POST"])])
