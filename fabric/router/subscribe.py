"""``WS /v1/subscribe``: push every change of the caller's tenant matching its patterns.

Protocol (docs/serving.md):
- the client connects with ``Authorization: Bearer <token>`` and sends
  ``{"subscribe": ["page.*", ...], "resume": "<token from a push>"?}``;
- a bad token is refused in the handshake with HTTP 401 (429 when rate limited); a
  bad first message gets an ``error`` and close code 4400;
- the server answers ``{"subscribed": [...], "tenant": ...}``, then, when resuming past the retention window,
  ``{"gap": "..."}``;
- then one message per change (``contract.Update``: the event, its freshness and a
  ``resume`` token), every change in feed order; with ``"batch": true`` in the request,
  a frame is a JSON array of every message waiting for the subscriber when it was sent
  (one, when it keeps up; several, when it is behind), in the same order; ``{"lagging": true, "after": token}``
  when the client fell behind the live feed and is being sent the feed from there at
  its own pace; ``{"heartbeat": time}`` when idle for ``router.heartbeat_s``;
  ``{"error": ..., "disconnected": true}`` and close code 4008 when serving it failed.

Changes the token's scopes or the access rules do not let the caller see are not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from fabric.errors import FabricError
from fabric.events.times import iso_ms
from fabric.registry.convert import converter
from fabric.router.hub import ENTRY_ID, SubscriberClosed
from fabric.router.problems import HTTPProblem
from fabric.router.state import caller, state_of

USAGE = 'first message must be {"subscribe": ["page.*", ...], "resume": "<token>"?, "batch": true?}'
#: messages in one frame at most, with ``"batch": true`` (the queue holds at most router.subscriber_buffer)
FRAME_MESSAGES = 1000
CLOSE_CODES = {401: 4401, 403: 4403, 429: 4429}


class BadRequest(FabricError, ValueError):
    """The first message is not a subscription request; the message says what is wrong."""


def _request(text: str, max_patterns: int, max_chars: int) -> tuple[list[str], str | None, bool]:
    try:
        request: Any = orjson.loads(text)
        patterns = request["subscribe"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise BadRequest(USAGE) from None
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise BadRequest(USAGE)
    if len(patterns) > max_patterns:
        raise BadRequest(f"{len(patterns)} patterns, over the limit of {max_patterns}")
    long = next((p for p in patterns if len(p) > max_chars), None)
    if long is not None:
        raise BadRequest(f"pattern {long[:40]!r}... is over {max_chars} characters")
    resume = request.get("resume")
    if resume is not None and (not isinstance(resume, str) or not ENTRY_ID.fullmatch(resume)):
        raise BadRequest("resume must be a token from a push (like 1700000000000-0)")
    batch = request.get("batch", False)
    if not isinstance(batch, bool):
        raise BadRequest("batch must be true or false")
    return patterns, resume, batch


async def subscribe(ws: WebSocket) -> None:
    st = state_of(ws)
    try:
        who, trace = await caller(ws, "push.subscribe", "subscribe")
    except HTTPProblem as e:
        # a real HTTP answer (401/403/429 with its headers) where the server can send one
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            body = orjson.dumps({"error": e.message})
            await ws.send_denial_response(
                Response(body, status_code=e.status, headers=e.headers, media_type="application/json")
            )
        else:
            await ws.close(code=CLOSE_CODES.get(e.status, 4400), reason=e.message[:120])
        return
    await ws.accept()
    limits = st.settings.router
    try:
        async with asyncio.timeout(limits.first_message_timeout_s):
            first = await ws.receive_text()
        patterns, resume, batch = _request(first, limits.max_patterns, limits.max_pattern_chars)
    except BadRequest as e:
        await ws.send_text(orjson.dumps({"error": str(e)}).decode())
        await ws.close(code=4400)
        return
    except TimeoutError:
        await ws.close(code=4408, reason="no subscription request in time")
        return
    except (WebSocketDisconnect, KeyError, RuntimeError):  # gone, or a binary frame where text was due
        with contextlib.suppress(Exception):
            await ws.close(code=4400)
        return
    hub = st.hub
    resource = " ".join(patterns)
    sub = hub.subscriber(who, patterns)
    await ws.send_text(orjson.dumps({"subscribed": patterns, "tenant": who.tenant}).decode())
    st.gate.record_allowed(who, "push.subscribe", resource, trace, f"resume {resume}" if resume else "")
    heartbeat = st.settings.router.heartbeat_s

    def versioned(msg: bytes) -> bytes:
        """The change in the schema version this consumer declared, if it declared one."""
        push = orjson.loads(msg)
        conv = (
            converter(st.schemas.store, who.tenant, who.sub, push.get("context_type", "")) if "event" in push else None
        )
        if conv is None:
            return msg
        push["event"] = orjson.loads(conv(orjson.dumps(push["event"])))
        return orjson.dumps(push)

    async def pump() -> None:
        if resume:  # the hub catches up in the background, at the pace of the sending below
            await hub.resume(sub, resume)
        else:
            await hub.join(sub)
        while True:
            try:
                messages = await asyncio.wait_for(sub.drain(FRAME_MESSAGES if batch else 1), heartbeat)
            except TimeoutError:
                await ws.send_text(orjson.dumps({"heartbeat": iso_ms(int(time.time() * 1000))}).decode())
                continue
            if st.schemas.store.consumer_manifest(who.tenant, who.sub):  # this consumer declared versions
                messages = [versioned(m) for m in messages]
            frame = b"[" + b",".join(messages) + b"]" if batch else messages[0]
            await ws.send_text(frame.decode())

    async def run_pump() -> None:
        try:
            await pump()
        except SubscriberClosed as e:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):  # the client may not be reading at all
                    await ws.send_text(orjson.dumps({"error": str(e), "disconnected": True}).decode())
                    await ws.close(code=4008, reason="the subscription failed")

    async def read_until_closed() -> None:
        while True:  # the client may only close; any message from it is ignored
            if (await ws.receive())["type"] == "websocket.disconnect":
                return

    tasks = [asyncio.create_task(run_pump()), asyncio.create_task(read_until_closed())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        hub.unsubscribe(sub)
        st.gate.record_allowed(
            who, "push.end", resource, trace,
            f"{sub.delivered} delivered, fell behind {sub.fell_behind} times" + (f"; {sub.closed}" if sub.closed else ""),
        )  # fmt: skip
