"""SaaS webhooks into SaaSRecord: an HTTP receiver that checks each delivery's HMAC signature.

``POST /hooks/{system}`` with a JSON body ``{"object": "Account", "record_id": "A-1",
"fields": {...}, "action": "updated", "url": ...}`` (or a list of them) and the header
``X-Fabric-Signature: sha256=<hex HMAC-SHA256 of the raw body with the system's secret>``
(the scheme GitHub, Stripe-like and most SaaS webhooks use). A missing or wrong
signature is 401 and nothing is published; a body that does not fit is 400 naming the
field; accepted deliveries answer 202 once the broker has them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fabric.errors import InvalidEvent, PublishError
from fabric.providers.sdk import Provider
from fabric.topics.envelope import Envelope

SIGNATURE = "x-fabric-signature"


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


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


def webhook_app(provider: Provider, secrets: dict[str, bytes]) -> Starlette:
    async def receive(request: Request) -> JSONResponse:
        system = request.path_params["system"]
        secret = secrets.get(system)
        body = await request.body()
        given = request.headers.get(SIGNATURE, "")
        if secret is None or not hmac.compare_digest(given, sign(secret, body)):
            return JSONResponse({"error": f"missing or wrong {SIGNATURE} for system {system!r}"}, 401)
        try:
            doc = orjson.loads(body)
            items = doc if isinstance(doc, list) else [doc]
            events = [record_event(provider, system, item, i) for i, item in enumerate(items)]
            for ev in events:
                provider.check(ev)
        except orjson.JSONDecodeError as e:
            return JSONResponse({"error": f"body is not JSON: {e}"}, 400)
        except InvalidEvent as e:
            return JSONResponse({"error": str(e), "pointer": e.pointer}, 400)
        try:
            report = await provider.publish_many(events)
        except PublishError as e:
            return JSONResponse({"error": str(e)}, 503, headers={"Retry-After": "1"})
        return JSONResponse({"accepted": report.sent}, 202)

    return Starlette(routes=[Route("/hooks/{system}", receive, methods=["POST"])])
