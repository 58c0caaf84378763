"""The fabric as a Model Context Protocol server (official ``mcp`` SDK, low-level ``Server``).

Mounted in the router at ``/mcp`` (streamable HTTP) and runnable as ``fabric mcp
--stdio`` for desktop clients. It serves what the HTTP API serves, under the same
gateway: the bearer token's tenant, scopes, access rules, rate limits and audit.

- Resources: every cached context, ``ctx://{tenant}/{context_type}/{subject}``
  (subject URL-escaped), as JSON with its freshness; one resource template per
  context type; listing pages through the tenant 100 at a time.
- Subscriptions (``subscriptions/listen``, protocol 2026-07-28): a listen stream is
  fed by the same change hub as WebSocket push, as the caller, so it only ever
  carries changes the caller may see; a URI of another tenant is accepted and never
  fires, exactly like one that does not exist.
- Tools: ``get_context``, ``list_contexts``, ``assemble_context``,
  ``query_composites``.
- Auth: the SDK's bearer middleware with the fabric's token verifier, and the
  protected-resource metadata (``/.well-known/oauth-protected-resource/mcp``)
  naming the configured issuer.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import Callable
from typing import Any

import mcp_types as types
import msgspec
import orjson
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette

from fabric import __version__
from fabric.client import subject_path
from fabric.errors import RateLimited, Unauthorized
from fabric.events.times import ms_of
from fabric.router.assemble import Assembler, policy_named
from fabric.router.contexts import fetch, recent_composites
from fabric.router.fastpath import read_context
from fabric.router.problems import HTTPProblem
from fabric.router.state import RouterState
from fabric.security.audit import trace_id_of
from fabric.security.tokens import Principal
from fabric.settings import Settings

NOT_FOUND = -32002  # the MCP spec's "resource not found"
FORBIDDEN = -32003
RATE_LIMITED = -32029
PAGE = 100
MCP_CODES = {404: NOT_FOUND, 403: FORBIDDEN, 429: RATE_LIMITED}
_enc = msgspec.json.Encoder()

StateGetter = Callable[[], RouterState]


def resource_uri(tenant: str, context_type: str, subject: str) -> str:
    return f"ctx://{tenant}/{context_type}/{subject_path(subject)}"


def parse_uri(uri: str) -> tuple[str, str, str]:
    """(tenant, context type, subject) of a ``ctx://`` URI."""
    if not uri.startswith("ctx://"):
        raise MCPError(NOT_FOUND, f"not a fabric resource: {uri!r} (expected ctx://tenant/type/subject)")
    tenant, _, rest = uri.removeprefix("ctx://").partition("/")
    ctype, _, subject = rest.partition("/")
    if not tenant or not ctype or not subject:
        raise MCPError(NOT_FOUND, f"not a fabric resource: {uri!r} (expected ctx://tenant/type/subject)")
    return tenant, ctype, urllib.parse.unquote(subject)


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> types.Tool:
    schema = {"type": "object", "additionalProperties": False, "properties": properties, "required": required}
    return types.Tool(name=name, description=description, input_schema=schema)


_LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}
TOOLS = [
    _tool("get_context", "The latest context of one subject (event JSON with freshness: as_of, age_ms, stale).",
          {"context_type": {"type": "string", "description": "PageDSL, SQLSchema, LogEntry, ..."},
           "subject": {"type": "string"}}, ["context_type", "subject"]),
    _tool("list_contexts", "The most recently changed subjects of a context type.",
          {"context_type": {"type": "string"}, "limit": _LIMIT}, ["context_type"]),
    _tool("assemble_context", "The prompt bundle for a subject under a named injection policy.",
          {"subject": {"type": "string"}, "policy": {"type": "string", "description": "name, or name@version"}},
          ["subject", "policy"]),
    _tool("query_composites",
          "Composite events the CEP patterns detected, newest first, of one pattern and in a time range.",
          {"pattern": {"type": "string"}, "since": {"type": "string", "format": "date-time"},
           "until": {"type": "string", "format": "date-time"}, "limit": _LIMIT}, []),
]  # fmt: skip


class FabricTokens:
    """The SDK's ``TokenVerifier`` protocol over the fabric's verifier (same tokens, same cache)."""

    def __init__(self, state: StateGetter) -> None:
        self.state = state

    async def verify_token(self, token: str) -> AccessToken | None:
        st = self.state()
        try:
            who = await st.gate.verifier.verify(f"Bearer {token}")
        except Unauthorized as e:
            st.gate.audit.record(None, "mcp", "/mcp", "deny", f"401 {e}", trace_id_of(None))
            return None
        # the SDK binds a session to (client_id, issuer, subject): the tenant is part of who,
        # so another tenant's token with the same ``sub`` cannot use or delete the session
        owner = f"{who.tenant}/{who.sub}"
        return AccessToken(
            token=token, client_id=owner, scopes=sorted(who.scopes), expires_at=int(min(who.expires, 2**31)),
            subject=owner, claims={"tenant": who.tenant},
        )  # fmt: skip


class FabricMCP:
    """The handlers; ``principal`` is fixed for stdio and comes from the request's token over HTTP."""

    def __init__(self, state: StateGetter, principal: Principal | None = None) -> None:
        self.state = state
        self.principal = principal

    async def _caller(self, action: str, resource: str) -> tuple[RouterState, Principal, str]:
        st = self.state()
        trace = trace_id_of(None)
        who = self.principal
        if who is None:
            token = get_access_token()
            if token is None:
                raise MCPError(FORBIDDEN, "no bearer token")
            try:
                who = await st.gate.verifier.verify(f"Bearer {token.token}")
            except Unauthorized as e:
                raise MCPError(FORBIDDEN, str(e)) from None
        if st.gate.enabled:
            try:
                await st.gate.limiter.check(who)
            except RateLimited as e:
                st.gate.audit.record(who, action, resource, "deny", "429 rate limited", trace)
                raise MCPError(RATE_LIMITED, f"{e}; retry after {e.retry_after} s") from None
        return st, who, trace

    def _require_read(self, st: RouterState, who: Principal, ct: str, action: str, resource: str, trace: str) -> None:
        if not who.can_read(ct):
            st.gate.audit.record(who, action, resource, "deny", f"403 lacks context:read:{ct}", trace)
            raise MCPError(FORBIDDEN, f"the token lacks scope 'context:read:{ct}'")

    # ------------------------------------------------------------------ resources

    async def list_resources(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        st, who, trace = await self._caller("mcp.resources.list", "*")
        names = [n for n in sorted(st.catalogue.context_types) if who.can_read(n)]
        index, offset = 0, 0
        if params is not None and params.cursor:
            try:
                i, _, o = params.cursor.partition(":")
                index, offset = int(i), int(o)
            except ValueError:
                raise MCPError(types.INVALID_PARAMS, f"bad cursor {params.cursor!r}") from None
        resources: list[types.Resource] = []
        while index < len(names) and len(resources) < PAGE:
            ct = st.catalogue[names[index]]
            want = PAGE - len(resources)
            members: Any = await st.redis.zrevrange(st.keys.recent(who.tenant, ct.name), offset, offset + want - 1)
            subjects = [m.decode() for m in members]
            for c in await fetch(st, who, ct, subjects):
                resources.append(types.Resource(
                    uri=resource_uri(who.tenant, ct.name, c.subject), name=f"{ct.name}/{c.subject}",
                    mime_type="application/json", description=f"{ct.name} context, as of {c.as_of}",
                ))  # fmt: skip
            if len(subjects) < want:
                index, offset = index + 1, 0
            else:
                offset += len(subjects)
        cursor = f"{index}:{offset}" if index < len(names) else None
        st.gate.record_allowed(who, "mcp.resources.list", "*", trace, f"{len(resources)} resources")
        return types.ListResourcesResult(resources=resources, next_cursor=cursor)

    async def list_templates(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        st, who, _ = await self._caller("mcp.templates.list", "*")
        templates = [
            types.ResourceTemplate(
                uri_template=f"ctx://{who.tenant}/{name}/{{subject}}", name=name, mime_type="application/json",
                description=f"the latest {name} context of a subject ({st.catalogue[name].kind})",
            )
            for name in sorted(st.catalogue.context_types) if who.can_read(name)
        ]  # fmt: skip
        return types.ListResourceTemplatesResult(resource_templates=templates)

    async def read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        tenant, ctype, subject = parse_uri(uri)
        st, who, trace = await self._caller("mcp.resources.read", f"{ctype}/{subject}")
        text = await self._context_json(st, who, trace, ctype, subject, "mcp.resources.read", tenant)
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )

    async def _context_json(
        self, st: RouterState, who: Principal, trace: str, ctype: str, subject: str, action: str,
        tenant: str | None = None,
    ) -> str:  # fmt: skip
        resource = f"{ctype}/{subject}"
        ct = st.catalogue.context_types.get(ctype)
        if ct is None:
            raise MCPError(NOT_FOUND, f"unknown context type {ctype!r}")
        self._require_read(st, who, ct.name, action, resource, trace)
        if tenant is not None and tenant != who.tenant:
            st.gate.record_allowed(who, action, resource, trace, "404 not found")
            # another tenant's URI looks exactly like a missing one
            raise MCPError(NOT_FOUND, f"no {ct.name} context for subject {subject!r}")
        try:
            context = await read_context(st, who, ct, subject, action, trace)
        except HTTPProblem as e:
            raise MCPError(MCP_CODES.get(e.status, types.INTERNAL_ERROR), e.message) from None
        return _enc.encode(context).decode()

    # ------------------------------------------------------------------ tools

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        await self._caller("mcp.tools.list", "*")
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        args = params.arguments or {}
        st, who, trace = await self._caller(f"mcp.tool.{params.name}", orjson.dumps(args).decode()[:200])
        try:
            text = await self._tool(st, who, trace, params.name, args)
        except MCPError as e:
            return types.CallToolResult(content=[types.TextContent(type="text", text=e.error.message)], is_error=True)
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    async def _tool(self, st: RouterState, who: Principal, trace: str, name: str, a: dict[str, Any]) -> str:
        def arg(key: str, kind: type, default: Any = None) -> Any:
            v = a.get(key, default)
            if v is None or not isinstance(v, kind) or isinstance(v, bool):
                raise MCPError(types.INVALID_PARAMS, f"argument {key!r} must be a {kind.__name__}")
            return v

        if name == "get_context":
            return await self._context_json(
                st, who, trace, arg("context_type", str), arg("subject", str), "mcp.tool.get_context"
            )
        if name == "list_contexts":
            ct = st.catalogue.context_types.get(arg("context_type", str))
            if ct is None:
                raise MCPError(NOT_FOUND, f"unknown context type {a.get('context_type')!r}")
            self._require_read(st, who, ct.name, "mcp.tool.list_contexts", ct.name, trace)
            limit = max(1, min(1000, arg("limit", int, 20)))
            members: Any = await st.redis.zrevrange(st.keys.recent(who.tenant, ct.name), 0, limit - 1)
            items = await fetch(st, who, ct, [m.decode() for m in members])
            st.gate.record_allowed(who, "mcp.tool.list_contexts", ct.name, trace, f"{len(items)} items")
            return _enc.encode({"context_type": ct.name, "items": items}).decode()
        if name == "assemble_context":
            try:
                policy = policy_named(st.policies, arg("policy", str), who.tenant)
            except HTTPProblem as e:
                raise MCPError(NOT_FOUND, e.message) from None
            subject = arg("subject", str)
            bundle = await Assembler(st).assemble(who, subject, policy)
            st.gate.record_allowed(who, "mcp.tool.assemble_context", f"{policy.name}@{policy.version}/{subject}", trace)
            return _enc.encode(bundle).decode()
        if name == "query_composites":
            self._require_read(st, who, "Composite", "mcp.tool.query_composites", "Composite", trace)
            since = _ms(a.get("since"), "since") if a.get("since") else "-inf"
            until = _ms(a.get("until"), "until") if a.get("until") else None
            limit = max(1, min(1000, arg("limit", int, 20)))
            pattern = a.get("pattern")
            items = await recent_composites(st, who, pattern if isinstance(pattern, str) else None, since, 1000)
            if until is not None:
                items = [c for c in items if ms_of(c.as_of) <= until]
            items = items[:limit]
            st.gate.record_allowed(
                who, "mcp.tool.query_composites", f"Composite/{pattern or '*'}", trace, f"{len(items)} items"
            )
            return _enc.encode({"context_type": "Composite", "items": items}).decode()
        raise MCPError(types.INVALID_PARAMS, f"unknown tool {name!r} (tools: {', '.join(t.name for t in TOOLS)})")

    # ------------------------------------------------------------------ subscriptions

    async def listen(
        self, ctx: ServerRequestContext[Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """One listen stream, fed by a change-hub subscription of the caller."""
        st, who, trace = await self._caller("mcp.subscribe", "subscriptions/listen")
        uris = list(params.notifications.resource_subscriptions or [])
        bus = InMemorySubscriptionBus()
        sub = st.hub.subscriber(who, ["*"])
        await st.hub.join(sub)
        st.gate.record_allowed(who, "mcp.subscribe", " ".join(uris)[:500], trace)

        async def pump() -> None:
            while True:
                change = orjson.loads(await sub.next())
                if "subject" in change:
                    await bus.publish(
                        ResourceUpdated(resource_uri(who.tenant, change["context_type"], change["subject"]))
                    )

        feeder = asyncio.create_task(pump())
        try:
            return await ListenHandler(bus)(ctx, params)
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            st.hub.unsubscribe(sub)


def _ms(value: Any, field: str) -> int:
    try:
        return ms_of(str(value))
    except ValueError:
        raise MCPError(types.INVALID_PARAMS, f"{field} must be an RFC 3339 time, got {value!r}") from None


def build_server(handlers: FabricMCP) -> Server[Any]:
    return Server(
        "context-fabric", version=__version__,
        instructions="Enterprise context for copilots: read ctx:// resources, call assemble_context for a "
                     "prompt bundle, listen to resources to be told when they change.",
        on_list_resources=handlers.list_resources, on_list_resource_templates=handlers.list_templates,
        on_read_resource=handlers.read_resource, on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool, on_subscriptions_listen=handlers.listen,
    )  # fmt: skip


def mcp_http_app(settings: Settings, state: StateGetter) -> tuple[Server[Any], Starlette]:
    """The MCP server and its streamable-HTTP app (``/mcp`` and the protected-resource metadata)."""
    server = build_server(FabricMCP(state))
    base = f"http://{settings.router.host}:{settings.router.port}"
    issuer = settings.security.issuer if settings.security.issuer.startswith("http") else base
    auth = AuthSettings(issuer_url=issuer, resource_server_url=f"{base}/mcp")
    app = server.streamable_http_app(
        streamable_http_path="/mcp", host=settings.router.host, auth=auth, token_verifier=FabricTokens(state)
    )
    return server, app
