"""The router's serving logic without a network: the gate, the fast path and its front
door, the MCP tools and the registry's store. Redis is a small in-memory stand-in for the
pipelined client (``FakeRedis``); the integration tests run the same paths on the real one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from mcp import types

from fabric.assembly.store import PolicyStore
from fabric.cache.keys import CacheKeys
from fabric.events.catalogue import Catalogue
from fabric.registry.store import RegistryFollower, SchemaStore
from fabric.router.edge import EdgeValidator
from fabric.router.fastpath import FrontDoor, read_context
from fabric.router.gate import Gate
from fabric.router.mcp import FabricMCP
from fabric.router.problems import HTTPProblem
from fabric.router.state import RouterState
from fabric.security.access import AccessRules
from fabric.security.audit import AuditLog
from fabric.security.ratelimit import RateLimiter
from fabric.security.tokens import Principal, TokenVerifier, mint
from fabric.settings import Settings


class FakeRedis:
    """The pipelined client's two calls over dicts; ``grant`` is the rate limiter's answer."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.lists: dict[str, list[bytes]] = {}
        self.strings: dict[str, bytes] = {}
        self.grant = [100, 0]
        self.down = False

    async def execute(self, *args: Any) -> Any:
        return (await self.many(args))[0]

    async def many(self, *commands: tuple[Any, ...]) -> list[Any]:
        if self.down:
            from fabric.cache.fastredis import RedisUnavailable

            raise RedisUnavailable("connection refused")
        out: list[Any] = []
        for name, *args in commands:
            if name == "HMGET":
                h = self.hashes.get(args[0], {})
                out.append([h.get(f) for f in args[1:]])
            elif name == "LRANGE":
                out.append(list(self.lists.get(args[0], [])))
            elif name == "EXISTS":
                out.append(int(args[0] in self.strings))
            elif name == "EVALSHA":
                out.append(list(self.grant))
            else:
                out.append(b"OK")
        return out

    async def close(self) -> None:
        pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def state(settings: Settings, catalogue: Catalogue) -> RouterState:
    fast = FakeRedis()
    keys = CacheKeys(settings.redis.key_prefix)
    fast.strings[keys.ready] = b"1"
    rules = AccessRules.load(settings.security.access_file, list(catalogue.context_types))
    limiter = RateLimiter(fast, settings.redis.key_prefix, settings.security)  # type: ignore[arg-type]
    gate = Gate(settings, TokenVerifier(settings), rules, limiter, AuditLog(None, "audit"))  # type: ignore[arg-type]
    return RouterState(
        settings, catalogue, None, keys, None, None, EdgeValidator(catalogue, 1 << 20), fast,  # type: ignore[arg-type]
        gate, PolicyStore.bundled(settings.security.injection_file), RegistryFollower(settings, SchemaStore(catalogue)),
    )  # fmt: skip


def audited(st: RouterState) -> list[dict[str, Any]]:
    return [orjson.loads(r) for r in st.gate.audit.pending]


def bearer(settings: Settings, tenant: str = "acme", scopes: tuple[str, ...] = ("context:read:*",), **kw: Any) -> str:
    return f"Bearer {mint(settings, tenant, list(scopes), **kw)}"


def put(st: RouterState, tenant: str, ctype: str, subject: str, event: dict[str, Any], level: int = 1) -> None:
    st.fast.hashes[st.keys.ctx(tenant, ctype, subject)] = {  # type: ignore[attr-defined]
        "seq": b"7", "at": str(event["at"]).encode(), "v": orjson.dumps(event), "count": b"3",
        "sens": str(level).encode(), "q": b"0.9",
    }  # fmt: skip


# -- the gate ---------------------------------------------------------------------------


def test_the_gate_refuses_without_a_good_token_and_audits_it(state: RouterState, settings: Settings) -> None:
    for header in (None, "Bearer nope", "Basic abc"):
        with pytest.raises(HTTPProblem) as e:
            asyncio.run(state.gate.admit(header, None, "context.read", "PageDSL/x"))
        assert e.value.status == 401 and "invalid_token" in (e.value.headers or {})["WWW-Authenticate"]
    assert [(r["decision"], r["action"]) for r in audited(state)] == [("deny", "context.read")] * 3


def test_the_gate_limits_rates_and_answers_503_when_the_store_is_down(state: RouterState, settings: Settings) -> None:
    fast: FakeRedis = state.fast  # type: ignore[assignment]
    fast.grant = [0, 3000]  # ms
    with pytest.raises(HTTPProblem) as e:
        asyncio.run(state.gate.admit(bearer(settings), None, "context.read", "PageDSL/x"))
    assert e.value.status == 429 and (e.value.headers or {})["Retry-After"] == "3"
    assert audited(state)[-1]["reason"] == "429 rate limited"
    fast.down = True
    with pytest.raises(HTTPProblem) as e:
        asyncio.run(state.gate.admit(bearer(settings, "other"), None, "context.read", "PageDSL/x"))
    assert e.value.status == 503
    fast.down, fast.grant = False, [10, 0]
    who, trace = asyncio.run(state.gate.admit(bearer(settings), "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01", "a", "r"))
    assert who.tenant == "acme" and trace == "ab" * 16


def test_scopes_and_access_rules_are_checked_and_every_decision_audited(state: RouterState, settings: Settings) -> None:
    who = asyncio.run(state.gate.verifier.verify(bearer(settings, scopes=("context:read:PageDSL",))))
    state.gate.require_read(who, "PageDSL", "context.read", "PageDSL/x", "t")
    with pytest.raises(HTTPProblem) as e:
        state.gate.require_read(who, "LogEntry", "context.read", "LogEntry/x", "t")
    assert e.value.status == 403 and "context:read:LogEntry" in e.value.message
    with pytest.raises(HTTPProblem):
        state.gate.require(who, "admin", "policies.write", "p", "t")
    assert state.gate.denied_by(who, "PageDSL", 3) is not None  # restricted needs a role
    state.gate.record_allowed(who, "context.read", "PageDSL/x", "t", "200")
    assert [r["decision"] for r in audited(state)] == ["deny", "deny", "allow"]


# -- the fast path and the front door ---------------------------------------------------


def test_a_pull_reads_one_hash_and_serves_freshness_and_quality(state: RouterState, settings: Settings) -> None:
    ct = state.catalogue["PageDSL"]
    put(state, "acme", "PageDSL", "home", {"id": "e1", "at": 1_700_000_000_000, "data": {"title": "Home"}})
    who = asyncio.run(state.gate.verifier.verify(bearer(settings)))
    ctx = asyncio.run(read_context(state, who, ct, "home", "context.read", "t"))
    assert (ctx.subject, ctx.sequence, ctx.changes, ctx.sensitivity) == ("home", 7, 3, "internal")
    assert orjson.loads(bytes(ctx.event))["id"] == "e1" and ctx.as_of.startswith("2023-11-14T22:13:20")
    assert ctx.quality == 0.9  # PageDSL has no TTL: freshness does not lower it
    # another tenant's token addresses its own keys only
    other = asyncio.run(state.gate.verifier.verify(bearer(settings, "other")))
    with pytest.raises(HTTPProblem) as e:
        asyncio.run(read_context(state, other, ct, "home", "context.read", "t"))
    assert e.value.status == 404


def test_a_pull_is_503_while_the_cache_rebuilds_and_403_past_an_access_rule(
    state: RouterState, settings: Settings
) -> None:
    ct = state.catalogue["PageDSL"]
    who = asyncio.run(state.gate.verifier.verify(bearer(settings)))
    del state.fast.strings[state.keys.ready]  # type: ignore[attr-defined]
    with pytest.raises(HTTPProblem) as e:
        asyncio.run(read_context(state, who, ct, "missing", "context.read", "t"))
    assert e.value.status == 503 and (e.value.headers or {})["Retry-After"] == "1"
    put(state, "acme", "PageDSL", "secret", {"id": "e2", "at": 1}, level=3)
    with pytest.raises(HTTPProblem) as e:
        asyncio.run(read_context(state, who, ct, "secret", "context.read", "t"))
    assert e.value.status == 403
    sre = asyncio.run(state.gate.verifier.verify(bearer(settings, roles=["sre"])))
    assert asyncio.run(read_context(state, sre, ct, "secret", "context.read", "t")).sensitivity == "restricted"


def test_the_front_door_sends_each_request_where_it_belongs(state: RouterState, settings: Settings) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(f"app {scope['method']} {scope['path']}")

    async def mcp(scope: Any, receive: Any, send: Any) -> None:
        seen.append(f"mcp {scope['path']}")

    app.state = type("S", (), {"fabric": state})()  # type: ignore[attr-defined]
    door = FrontDoor(app, mcp)  # type: ignore[arg-type]
    put(state, "acme", "PageDSL", "home", {"id": "e1", "at": 1})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    def call(method: str, path: str, auth: str | None = None) -> None:
        headers = [(b"authorization", auth.encode())] if auth else []
        scope = {"type": "http", "method": method, "path": path, "headers": headers}
        asyncio.run(door(scope, receive, send))

    call("POST", "/mcp")
    call("GET", "/.well-known/oauth-protected-resource")
    call("GET", "/v1/contexts/PageDSL")  # the listing: not the fast path
    call("POST", "/v1/events")
    call("GET", "/v1/contexts/PageDSL/home", bearer(settings))
    call("GET", "/v1/contexts/PageDSL/home")  # no token: answered here, 401
    assert seen == ["mcp /mcp", "mcp /.well-known/oauth-protected-resource", "app GET /v1/contexts/PageDSL",
                    "app POST /v1/events"]  # fmt: skip
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert statuses == [200, 401]
    assert orjson.loads(sent[1]["body"])["subject"] == "home"


# -- MCP tools --------------------------------------------------------------------------


def tool(state: RouterState, who: Principal, name: str, **args: Any) -> types.CallToolResult:
    handlers = FabricMCP(lambda: state, who)
    return asyncio.run(handlers.call_tool(None, types.CallToolRequestParams(name=name, arguments=args)))  # type: ignore[arg-type]


def test_mcp_tools_answer_check_their_arguments_and_audit(state: RouterState, settings: Settings) -> None:
    put(state, "acme", "PageDSL", "home", {"id": "e1", "at": 1})
    who = asyncio.run(state.gate.verifier.verify(bearer(settings)))
    ok = tool(state, who, "get_context", context_type="PageDSL", subject="home")
    assert not ok.is_error and orjson.loads(ok.content[0].text)["event"]["id"] == "e1"  # type: ignore[union-attr]
    for args, problem in [({"context_type": "PageDSL"}, "argument 'subject' must be a str"),
                          ({"context_type": 3, "subject": "x"}, "argument 'context_type' must be a str")]:  # fmt: skip
        bad = tool(state, who, "get_context", **args)
        assert bad.is_error and problem in bad.content[0].text  # type: ignore[union-attr]
    unknown = tool(state, who, "drop_tables")
    assert unknown.is_error and "unknown tool 'drop_tables'" in unknown.content[0].text  # type: ignore[union-attr]
    narrow = asyncio.run(state.gate.verifier.verify(bearer(settings, scopes=("context:read:LogEntry",))))
    refused = tool(state, narrow, "get_context", context_type="PageDSL", subject="home")
    assert refused.is_error and "context:read:PageDSL" in refused.content[0].text  # type: ignore[union-attr]
    decisions = [(r["action"], r["decision"]) for r in audited(state)]
    assert ("mcp.tool.get_context", "allow") in decisions and ("mcp.tool.get_context", "deny") in decisions


def test_mcp_tools_are_rate_limited_like_http(state: RouterState, settings: Settings) -> None:
    who = asyncio.run(state.gate.verifier.verify(bearer(settings)))
    state.fast.grant = [0, 2000]  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="retry after 2 s"):
        tool(state, who, "get_context", context_type="PageDSL", subject="home")


# -- the registry's store ---------------------------------------------------------------


def schema_record(subject: str, version: int, sid: int, fields: list[dict[str, Any]]) -> bytes:
    schema = {"type": "record", "name": subject, "namespace": "fabric", "fields": fields}
    return orjson.dumps({"subject": subject, "version": version, "id": sid, "schema": schema})


def test_the_registry_store_applies_versions_routing_and_manifests(catalogue: Catalogue) -> None:
    store = SchemaStore(Catalogue.load(Path(__file__).resolve().parents[2] / "fabric" / "schemas"))
    base = store.latest("PageDSL")
    assert base is not None and base.version == 1
    fields = [*base.schema["fields"], {"name": "owner", "type": ["null", "string"], "default": None}]
    store.apply_record("schema:PageDSL:2", schema_record("PageDSL", 2, 1001, fields))
    latest = store.latest("PageDSL")
    assert latest is not None and (latest.version, latest.id) == (2, 1001)
    assert store.catalogue.version["PageDSL"] == 2  # the catalogue now encodes with version 2
    assert store.problems("PageDSL", base.schema) == []  # backward: dropping the optional field reads
    store.apply_record("config:PageDSL", orjson.dumps({"compatibility": "FULL"}))
    assert store.level("PageDSL") == "FULL"
    store.apply_record("config:PageDSL", None)
    assert store.level("PageDSL") == store.default_level
    rules = [{"match": "page.*", "context_type": "PageDSL"}, {"match": "*", "context_type": "LogEntry"}]
    store.apply_record("routing:2", orjson.dumps({"rules": rules}))
    store.apply_record("routing:1", orjson.dumps({"rules": [{"match": "*", "context_type": "Metric"}]}))  # older
    assert store.catalogue.resolve("weather.changed").name == "LogEntry"
    consumer = {"consumer": {"id": "bot", "owner": "ops", "consumes": [{"context_type": "PageDSL", "version": 1}]}}
    store.apply_record("consumer:acme/bot", orjson.dumps(consumer))
    assert store.consumer_version("acme", "bot", "PageDSL") == 1
    assert store.consumer_version("other", "bot", "PageDSL") is None  # another tenant's manifest is not seen
    assert [m.tenant for m in store.manifests_of("other")] == []


def test_the_registry_store_ignores_forged_or_broken_records(catalogue: Catalogue) -> None:
    store = SchemaStore(Catalogue.load(Path(__file__).resolve().parents[2] / "fabric" / "schemas"))
    bomb = [{"name": "xs", "type": {"type": "array", "items": {"type": "record", "name": "E", "fields": []}}}]
    store.apply_record("schema:PageDSL:2", schema_record("PageDSL", 2, 1002, bomb))
    store.apply_record("schema:PageDSL:3", b"not json")
    store.apply_record("routing:9", orjson.dumps({"rules": [{"match": "*", "context_type": "NoSuchType"}]}))
    store.apply_record("consumer:acme/bot", orjson.dumps({"consumer": "not a mapping"}))
    latest = store.latest("PageDSL")
    assert latest is not None and latest.version == 1
    assert store.routing_version == 0 and store.manifests == {}


async def test_an_mcp_body_is_read_up_to_its_limit_and_replayed() -> None:
    from fabric.router.fastpath import bounded_receive

    def client(*chunks: bytes) -> Any:
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        messages.append({"type": "http.disconnect"})

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        return receive

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": "http", "headers": []}
    replay = await bounded_receive(scope, client(b'{"a":', b" 1}"), send, 10)
    assert replay is not None and sent == []
    assert await replay() == {"type": "http.request", "body": b'{"a": 1}', "more_body": False}
    assert (await replay())["type"] == "http.disconnect"  # then the client's own messages
    assert await bounded_receive(scope, client(b"x" * 6, b"x" * 6), send, 10) is None
    assert sent[0]["status"] == 413 and b"over the limit of 10" in sent[1]["body"]
    sent.clear()
    declared = {"type": "http", "headers": [(b"content-length", b"11")]}
    assert await bounded_receive(declared, client(b""), send, 10) is None and sent[0]["status"] == 413
