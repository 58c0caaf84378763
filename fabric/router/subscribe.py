"""``WS /v1/subscribe``: push every change of the caller's tenant matching its patterns.

Protocol: the client sends ``{"subscribe": ["page.*", ...]}``; the server answers
``{"subscribed": [...]}`` and then sends one message per change (see ``hub.Push``).
A client that falls behind receives ``{"lagging": true, "dropped": n}``.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from fabric.router.state import HTTPProblem, state_of, tenant_of


async def subscribe(ws: WebSocket) -> None:
    try:
        tenant = tenant_of(ws)
    except HTTPProblem as e:
        await ws.close(code=4401 if e.status == 401 else 4400, reason=e.message)
        return
    await ws.accept()
    try:
        request = orjson.loads(await ws.receive_text())
        patterns = request["subscribe"]
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        await ws.send_text('{"error":"first message must be {\\"subscribe\\": [\\"page.*\\", ...]}"}')
        await ws.close(code=4400)
        return
    except WebSocketDisconnect:
        return
    hub = state_of(ws).hub
    sub = await hub.subscribe(tenant, patterns)
    await ws.send_text(orjson.dumps({"subscribed": patterns, "tenant": tenant}).decode())

    async def pump() -> None:
        reported = 0
        while True:
            msg = await sub.next()
            if sub.dropped > reported:
                reported = sub.dropped
                await ws.send_text(orjson.dumps({"lagging": True, "dropped": sub.dropped}).decode())
            await ws.send_text(msg.decode())

    sender = asyncio.create_task(pump())
    try:
        while True:  # the client may only close; any message from it is ignored
            if (await ws.receive())["type"] == "websocket.disconnect":
                break
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        hub.unsubscribe(sub)
