"""The pull fast path: ``GET /v1/contexts/{type}/{subject}`` answered below Starlette.

A pull is the request copilots make most, so it is answered here, below the
middleware and routing stack (which costs more than the pull itself), reading Redis
through the auto-pipelining client. Everything else goes to the Starlette app.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.applications import Starlette

from fabric.router.contexts import _build
from fabric.router.fastredis import RedisUnavailable
from fabric.router.state import HTTPProblem, RouterState, check_tenant, context_type_named

PREFIX = "/v1/contexts/"
_JSON = [(b"content-type", b"application/json")]
_enc = msgspec.json.Encoder()

Scope = dict[str, Any]


async def _answer(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Any, status: int, message: str, retry: bool = False) -> None:
    await _answer(send, status, _enc.encode({"error": message}), [(b"retry-after", b"1")] if retry else None)


class FastPull:
    """ASGI wrapper: pulls here, the rest to ``app``."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "GET" or not path.startswith(PREFIX):
            return await self.app(scope, receive, send)
        ctype, sep, subject = path[len(PREFIX) :].partition("/")
        if not sep or not subject:
            return await self.app(scope, receive, send)  # the list endpoint
        st: RouterState = self.app.state.fabric
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-fabric-tenant"), None)
        try:
            tenant = check_tenant(header)
            ct = context_type_named(st.registry, ctype)
        except HTTPProblem as e:
            return await _error(send, e.status, e.message)
        key = st.keys.ctx(tenant, ct.name, subject)
        try:
            if ct.kind == "stream":
                fields, window = await st.fast.many(
                    ("HMGET", key, "seq", "at", "v", "count"),
                    ("LRANGE", st.keys.window(tenant, ct.name, subject), 0, -1),
                )
            else:
                fields, window = await st.fast.execute("HMGET", key, "seq", "at", "v", "count"), None
            if fields[2] is None:
                if not st.cache_ready or not await st.fast.execute("EXISTS", st.keys.ready):
                    return await _error(send, 503, "the context cache is being rebuilt from Kafka; retry shortly", True)
                return await _error(send, 404, f"no {ct.name} context for subject {subject!r}")
        except RedisUnavailable as e:
            return await _error(send, 503, f"the context cache is unavailable: {e}", True)
        await _answer(send, 200, _enc.encode(_build(ct, subject, fields, window, st.cache_ready)))
