"""The registry over HTTP: a Confluent Schema Catalogue compatible subset, and manifests.

Kafka tools and Confluent serializers can point ``schema.registry.url`` at the router
(with ``bearer.auth.credentials.source=STATIC_TOKEN``):

| method | path | |
|---|---|---|
| GET | ``/subjects``, ``/subjects/{s}/versions``, ``/subjects/{s}/versions/{v or latest}`` | subjects and versions |
| POST | ``/subjects/{s}/versions`` | register (``registry:write``); 409 naming the field when incompatible |
| POST | ``/subjects/{s}`` | is this schema registered under ``s``? |
| GET | ``/schemas/ids/{id}`` | a schema by id (data records, and the typed envelopes of the typed topics) |
| POST | ``/compatibility/subjects/{s}/versions/{v}`` | would it be compatible? |
| GET, PUT | ``/config/{s}`` | the subject's compatibility level |

A context type's data schema is subject ``<ContextType>`` (``PageDSL``); its record's
full name (``fabric.PageDSL``, the RecordNameStrategy subject) names the same subject.
Manifests: ``GET /v1/registry/manifests``, ``POST /v1/registry/manifests``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import fastavro
import orjson
from aiokafka.errors import KafkaError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fabric.errors import ConfigError
from fabric.events.catalogue import GENERIC_SCHEMA_ID, TYPED_ID_OFFSET
from fabric.registry.compat import zero_size_items
from fabric.registry.manifests import parse_manifest
from fabric.registry.store import FIRST_ID, SchemaVersion, valid_level
from fabric.router import bodies
from fabric.router.problems import HTTPProblem
from fabric.router.state import RouterState, caller, state_of
from fabric.security.tokens import OPERATOR_SCOPE, Principal

CT = "application/vnd.schemaregistry.v1+json"


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=CT)


def _err(status: int, code: int, message: str) -> Response:
    return _json({"error_code": code, "message": message}, status)


def _subject(st: RouterState, name: str) -> str:
    for ct in st.catalogue.context_types.values():
        if name == ct.schema:  # fabric.PageDSL -> PageDSL
            return ct.name
    return name


async def _reader(request: Request) -> tuple[RouterState, Principal, str]:
    st = state_of(request)
    who, trace = await caller(request, "registry.read", request.url.path)
    return st, who, trace


async def _writer(request: Request) -> tuple[RouterState, Principal, str]:
    """A tenant's registry write (its own manifests): scope ``registry:write``."""
    st = state_of(request)
    who, trace = await caller(request, "registry.write", request.url.path)
    if not (who.can("registry:write")):
        raise st.gate.forbid(who, "registry.write", request.url.path, trace, "the token lacks scope 'registry:write'")
    return st, who, trace


async def _operator(request: Request) -> tuple[RouterState, Principal, str]:
    """A write to what every tenant shares (schemas, compatibility, routing): the operator only."""
    st = state_of(request)
    who, trace = await caller(request, "registry.write", request.url.path)
    if not who.operator:
        raise st.gate.forbid(
            who, "registry.write", request.url.path, trace,
            f"schemas, compatibility and routing are platform objects: they change only with the operator scope "
            f"'{OPERATOR_SCOPE}' (tenant {st.settings.security.operator_tenant!r})",
        )  # fmt: skip
    return st, who, trace


def _view(sv: SchemaVersion) -> dict[str, Any]:
    return {"subject": sv.subject, "version": sv.version, "id": sv.id, "schemaType": "AVRO",
            "schema": orjson.dumps(sv.schema).decode()}  # fmt: skip


def _version(st: RouterState, subject: str, version: str) -> SchemaVersion | Response:
    versions = st.schemas.store.subjects.get(subject)
    if not versions:
        return _err(404, 40401, f"subject {subject!r} not found")
    if version == "latest":
        return versions[max(versions)]
    if not version.isdigit() or int(version) not in versions:
        return _err(404, 40402, f"version {version} of {subject!r} not found")
    return versions[int(version)]


async def _schema_of(request: Request) -> Any:
    try:
        body = orjson.loads(await bodies.read(request))
        if body.get("schemaType", "AVRO") != "AVRO":
            raise ValueError("only AVRO schemas are supported")
        schema = orjson.loads(body["schema"]) if isinstance(body["schema"], str) else body["schema"]
        fastavro.parse_schema(schema)
        bomb = zero_size_items(schema)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, RecursionError,
            fastavro.schema.SchemaParseException) as e:  # fmt: skip
        raise HTTPProblem(422, f"invalid Avro schema: {str(e)[:300]}") from None
    if bomb is not None:
        raise HTTPProblem(422, f"invalid Avro schema: the items of {bomb} can be written in zero bytes (null, an "
                               "empty record): a tiny record could declare billions of them")  # fmt: skip
    return schema


async def subjects(request: Request) -> Response:
    st, _, _ = await _reader(request)
    return _json(sorted(st.schemas.store.subjects))


async def versions(request: Request) -> Response:
    st, _, _ = await _reader(request)
    subject = _subject(st, request.path_params["subject"])
    vs = st.schemas.store.subjects.get(subject)
    return _json(sorted(vs)) if vs else _err(404, 40401, f"subject {subject!r} not found")


async def version(request: Request) -> Response:
    st, _, _ = await _reader(request)
    sv = _version(st, _subject(st, request.path_params["subject"]), request.path_params["version"])
    return sv if isinstance(sv, Response) else _json(_view(sv))


async def by_id(request: Request) -> Response:
    st, _, _ = await _reader(request)
    try:
        sid = int(request.path_params["id"])
    except ValueError:
        return _err(404, 40403, "schema not found")
    store, reg = st.schemas.store, st.catalogue
    if sid in store.by_id:
        return _json({"schema": orjson.dumps(store.by_id[sid].schema).decode()})
    if sid == GENERIC_SCHEMA_ID:
        return _json({"schema": orjson.dumps(reg.schemas.envelope_raw).decode()})
    ct = reg.by_schema_id.get(sid)
    if ct is not None:  # a typed envelope: the envelope around that version's data record
        data = store.by_id.get(sid - TYPED_ID_OFFSET) if sid >= TYPED_ID_OFFSET else store.subjects[ct.name][1]
        if data is not None:
            return _json({"schema": orjson.dumps(reg.schemas.typed_raw(data.schema)).decode()})
    return _err(404, 40403, f"schema {sid} not found")


async def lookup(request: Request) -> Response:
    st, _, _ = await _reader(request)
    subject = _subject(st, request.path_params["subject"])
    found = st.schemas.store.find(subject, await _schema_of(request))
    return _json(_view(found)) if found else _err(404, 40403, f"schema not registered under {subject!r}")


async def compatibility(request: Request) -> Response:
    st, _, _ = await _reader(request)
    subject = _subject(st, request.path_params["subject"])
    schema = await _schema_of(request)
    against = _version(st, subject, request.path_params["version"])
    if isinstance(against, Response):
        return against
    messages = st.schemas.store.problems(subject, schema, against)
    return _json({"is_compatible": not messages, "messages": messages})


async def register(request: Request) -> Response:
    st, who, trace = await _operator(request)
    subject = _subject(st, request.path_params["subject"])
    schema = await _schema_of(request)
    store = st.schemas.store
    lock, token = f"{st.settings.redis.key_prefix}:registry:lock", uuid.uuid4().hex
    for _ in range(100):  # one registration at a time across routers
        if await st.redis.set(lock, token, nx=True, px=10_000):
            break
        await asyncio.sleep(0.05)
    else:
        raise HTTPProblem(503, "the registry is busy; retry", {"Retry-After": "1"})
    try:
        await st.schemas.catch_up()  # decide on everything registered so far
        existing = store.find(subject, schema)
        if existing is not None:
            return _json({"id": existing.id})
        messages = store.problems(subject, schema)
        if messages:
            st.gate.audit.record(who, "registry.write", subject, "deny", "409 incompatible", trace)
            return _err(409, 409, f"schema being registered is incompatible with an earlier schema for subject "
                                  f"{subject!r} ({store.level(subject)}): {'; '.join(messages)}")  # fmt: skip
        latest = store.latest(subject)
        sv = SchemaVersion(
            subject, (latest.version if latest else 0) + 1, max([FIRST_ID - 1, *store.by_id]) + 1, schema
        )
        await _store(st, f"schema:{subject}:{sv.version}", sv.record())
    finally:
        if await st.redis.get(lock) == token.encode():
            await st.redis.delete(lock)
    st.gate.record_allowed(who, "registry.write", f"{subject}@{sv.version}", trace, f"id {sv.id}")
    return _json({"id": sv.id})


async def config(request: Request) -> Response:
    subject = request.path_params["subject"]
    if request.method == "GET":
        st, _, _ = await _reader(request)
        return _json({"compatibilityLevel": st.schemas.store.level(_subject(st, subject))})
    st, who, trace = await _operator(request)
    subject = _subject(st, subject)
    try:
        level = valid_level(orjson.loads(await bodies.read(request)).get("compatibility"))
    except (orjson.JSONDecodeError, AttributeError, ValueError) as e:
        return _err(422, 42203, str(e))
    await _store(st, f"config:{subject}", orjson.dumps({"compatibility": level}))
    st.gate.record_allowed(who, "registry.write", f"config:{subject}", trace, level)
    return _json({"compatibility": level})


async def manifests(request: Request) -> Response:
    """A tenant's provider and consumer manifests (and the platform's, read-only): each is
    stored under the caller's tenant, so its version pins apply to that tenant alone."""
    if request.method == "GET":
        st, who, _ = await _reader(request)
        return _json([{m.kind: m.spec} for m in st.schemas.store.manifests_of(who.tenant)])
    st, who, trace = await _writer(request)
    try:
        # the operator's manifests are the platform's (every tenant's default); a tenant's are its own
        m = parse_manifest(
            orjson.loads(await bodies.read(request)), "body", tenant=None if who.operator else who.tenant
        )
    except orjson.JSONDecodeError as e:
        raise HTTPProblem(400, f"body is not JSON: {e}") from None
    except ConfigError as e:
        raise HTTPProblem(400, str(e)) from None
    value = orjson.dumps({m.kind: m.spec})
    await _store(st, m.key, value)
    st.gate.record_allowed(who, "registry.write", m.key, trace)
    return _json({"registered": m.key}, 201)


async def _store(st: RouterState, key: str, value: bytes | None) -> None:
    """Write one registry record and apply it here at once; 503 when the broker does not take it."""
    try:
        await asyncio.wait_for(
            st.producer.send_and_wait(st.settings.topic("registry"), value, key=key.encode()),
            st.settings.router.produce_timeout_s,
        )
    except (KafkaError, TimeoutError) as e:
        raise HTTPProblem(
            503, f"the broker did not store {key} ({type(e).__name__}); retry", {"Retry-After": "1"}
        ) from None
    st.schemas.store.apply_record(key, value)


async def overview(request: Request) -> Response:
    """Everything versioned in the registry that the caller's tenant uses, in one answer."""
    st, who, _ = await _reader(request)
    store, policies = st.schemas.store, st.policies
    return _json({
        "schemas": {subject: sorted(vs) for subject, vs in sorted(store.subjects.items())},
        "routing": {"version": store.routing_version, "rules": len(st.catalogue.rules)},
        "patterns": {name: spec.get("version", 1) for name, spec in sorted(store.patterns_of(who.tenant).items())},
        "policies": {name: sorted(vs) for name, vs in sorted(policies.versions(who.tenant).items())},
        "manifests": sorted(m.key for m in store.manifests_of(who.tenant)),
    })  # fmt: skip


async def routing(request: Request) -> Response:
    """``GET``: the event-type -> context-type rules in force; ``PUT {"rules": [...]}``: a new version."""
    if request.method == "GET":
        st, _, _ = await _reader(request)
        rules = [{"match": r.match, "context_type": r.context_type} for r in st.catalogue.rules]
        return _json({"version": st.schemas.store.routing_version, "rules": rules})
    st, who, trace = await _operator(request)
    try:
        body = orjson.loads(await bodies.read(request))
        rules = body["rules"] if isinstance(body, dict) else body
        if not isinstance(rules, list) or not rules:
            raise ValueError("rules must be a non-empty list of {match, context_type}")
        for i, r in enumerate(rules):
            if not isinstance(r, dict) or not isinstance(r.get("match"), str):
                raise ValueError(f"rules[{i}].match must be a string")
            if r.get("context_type") not in st.catalogue.context_types:
                raise ValueError(f"rules[{i}].context_type: unknown context type {r.get('context_type')!r}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise HTTPProblem(400, f"invalid routing: {e}") from None
    version = st.schemas.store.routing_version + 1
    await _store(st, f"routing:{version}", orjson.dumps({"version": version, "rules": rules}))
    st.gate.record_allowed(who, "registry.write", f"routing:{version}", trace, f"{len(rules)} rules")
    return _json({"version": version})


ROUTES = [
    Route("/v1/registry", overview, methods=["GET"]),
    Route("/v1/registry/routing", routing, methods=["GET", "PUT"]),
    Route("/subjects", subjects, methods=["GET"]),
    Route("/subjects/{subject}/versions", versions, methods=["GET"]),
    Route("/subjects/{subject}/versions", register, methods=["POST"]),
    Route("/subjects/{subject}/versions/{version}", version, methods=["GET"]),
    Route("/subjects/{subject}", lookup, methods=["POST"]),
    Route("/schemas/ids/{id}", by_id, methods=["GET"]),
    Route("/compatibility/subjects/{subject}/versions/{version}", compatibility, methods=["POST"]),
    Route("/config/{subject}", config, methods=["GET", "PUT"]),
    Route("/v1/registry/manifests", manifests, methods=["GET", "POST"]),
]
