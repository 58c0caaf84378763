"""The pull fast path: ``GET /v1/contexts/{type}/{subject}`` answered below Starlette.

A pull is the request copilots make most, so it is answered here, below the
middleware and routing stack (which costs more than the pull itself), reading Redis
through the auto-pipelining client. The rate-limit script and the read go out in
one write, so a pull is one Redis round trip with the gateway on. Everything else
goes to the Starlette app.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.applications import Starlette

from fabric.cache.fastredis import RedisUnavailable
from fabric.contract import Context
from fabric.errors import RateLimited
from fabric.events.catalogue import ContextType
from fabric.router import bodies
from fabric.router.contexts import build_context
from fabric.router.problems import HTTPProblem
from fabric.router.state import RouterState, context_type_named
from fabric.security.audit import trace_id_of
from fabric.security.tokens import Principal

PREFIX = "/v1/contexts/"
ACTION = "context.read"
_JSON = [(b"content-type", b"application/json")]
_enc = msgspec.json.Encoder()

Scope = dict[str, Any]


async def _answer(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Any, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await _answer(send, status, _enc.encode({"error": message}), extra)


def _headers(scope: Scope) -> tuple[str | None, str | None]:
    auth = trace = None
    for k, v in scope["headers"]:
        if k == b"authorization":
            auth = v.decode("latin-1")
        elif k == b"traceparent":
            trace = v.decode("latin-1")
    return auth, trace


MCP_PATHS = ("/mcp", "/.well-known/oauth-protected-resource")


async def bounded_receive(scope: Scope, receive: Any, send: Any, limit: int) -> Any:
    """A ``receive`` that replays the request's body, read here up to ``limit`` bytes (None,
    with a 413 answered, past it), for apps that read a body whole whatever its size (the
    MCP SDK does)."""
    for k, v in scope["headers"]:
        if k == b"content-length" and v.isdigit() and int(v) > limit:
            await _error(send, 413, f"body is {v[:20].decode()} bytes, over the limit of {limit}")
            return None
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return receive
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            await _error(send, 413, f"body is over the limit of {limit} bytes")
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    replayed = False

    async def replay() -> Any:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    return replay


class FrontDoor:
    """The router's front door (ASGI): MCP requests to ``mcp``, single pulls answered here on
    the fast path (``read_context``), everything else to the Starlette ``app``."""

    def __init__(self, app: Starlette, mcp: Any = None) -> None:
        self.app = app
        self.mcp = mcp

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        if self.mcp is not None and scope["type"] == "http" and path.startswith(MCP_PATHS):
            bounded = await bounded_receive(scope, receive, send, bodies.JSON_BYTES)
            if bounded is not None:
                await self.mcp(scope, bounded, send)
            return None
        if scope["type"] != "http" or scope["method"] != "GET" or not path.startswith(PREFIX):
            return await self.app(scope, receive, send)
        ctype, sep, subject = path[len(PREFIX) :].partition("/")
        if not sep or not subject:
            return await self.app(scope, receive, send)  # the list endpoint
        try:
            await self._pull(scope, send, ctype, subject)
        except HTTPProblem as e:
            await _error(send, e.status, e.message, e.headers)

    async def _pull(self, scope: Scope, send: Any, ctype: str, subject: str) -> None:
        st: RouterState = self.app.state.fabric
        gate = st.gate
        resource = f"{ctype}/{subject}"
        auth, traceparent = _headers(scope)
        trace = trace_id_of(traceparent)
        who = await gate.authenticate(auth, ACTION, resource, trace)
        ct = context_type_named(st.catalogue, ctype)
        gate.require_read(who, ct.name, ACTION, resource, trace)
        context = await read_context(st, who, ct, subject, ACTION, trace, renew_limit=True)
        await _answer(send, 200, _enc.encode(context))


async def read_context(
    st: RouterState, who: Principal, ct: ContextType, subject: str, action: str, trace: str,
    *, renew_limit: bool = False,
) -> Context[msgspec.Raw]:  # fmt: skip
    """One context of the caller's tenant: the single pull of the HTTP fast path and of MCP.

    One Redis round trip through the auto-pipelining client; with ``renew_limit`` the
    rate-limit lease renewal rides in the same write. Missing is 404 (503 while the
    cache is rebuilt), an access rule on its sensitivity is 403; both audited."""
    gate = st.gate
    resource = f"{ct.name}/{subject}"
    commands: list[tuple[Any, ...]] = [
        ("HMGET", st.keys.ctx(who.tenant, ct.name, subject), "seq", "at", "v", "count", "sens", "q")
    ]
    if ct.kind == "stream":
        commands.append(("LRANGE", st.keys.window(who.tenant, ct.name, subject), 0, -1))
    renew = renew_limit and gate.enabled and not gate.limiter.take_local(who)
    if renew:
        commands.append(gate.limiter.command(who))
    try:
        replies = await (gate.limiter.many(*commands) if renew else st.fast.many(*commands))
        if renew:
            gate.limiter.settle(who, replies[-1])
        fields = replies[0]
        if fields[2] is None:
            if not st.cache_ready or not await st.fast.execute("EXISTS", st.keys.ready):
                raise HTTPProblem(503, "the context cache is being rebuilt from Kafka; retry shortly",
                                  {"Retry-After": "1"})  # fmt: skip
            gate.record_allowed(who, action, resource, trace, "404 not found")
            raise HTTPProblem(404, f"no {ct.name} context for subject {subject!r}")
    except RedisUnavailable as e:
        raise HTTPProblem(503, f"the context cache is unavailable: {e}", {"Retry-After": "1"}) from None
    except RateLimited as e:
        raise gate.limited(who, action, resource, trace, e) from None
    rule = gate.denied_by(who, ct.name, int(fields[4] or 1))
    if rule is not None:
        raise gate.forbid(who, action, resource, trace, f"access rule {rule!r} denies this context")
    context = build_context(st, who, ct, subject, fields, replies[1] if ct.kind == "stream" else None)
    gate.record_allowed(who, action, resource, trace)
    return context
