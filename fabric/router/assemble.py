"""``POST /v1/assemble`` and ``/v1/policies``: the context bundle a copilot puts in its prompt.

Request: ``{"subject": "orders-list", "policy": "page-copilot"}`` (``"policy@2"`` for a
version, or ``"inline": {...}`` for a one-off policy, which needs the admin scope).
The answer has one section per policy section, in policy order; each item carries the
event, its provenance (source, id, type, provider, topic) and freshness. Items are
added in order while they fit the token budget (about 4 characters of JSON per
token); what was left out is counted per reason: ``budget``, ``stale`` (older than the
type's TTL), ``withheld`` (the caller's scopes or the access rules).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from aiokafka.errors import KafkaError
from starlette.requests import Request
from starlette.responses import Response

from fabric.assembly.policy import InjectionPolicy, matcher, policy_from, resolve
from fabric.assembly.policy import Section as PolicySection
from fabric.assembly.store import PolicyStore
from fabric.contract import Bundle, Context, Item, Omitted, Provenance, Section
from fabric.errors import ConfigError
from fabric.events.catalogue import ContextType
from fabric.events.times import ms_of
from fabric.registry.store import POLICY
from fabric.router import bodies
from fabric.router.contexts import build_context
from fabric.router.problems import HTTPProblem
from fabric.router.state import RouterState, caller, state_of
from fabric.security.tokens import Principal

CHARS_PER_TOKEN = 4
_enc = msgspec.json.Encoder()


@dataclass
class _Candidate:
    ctx: Context[msgspec.Raw]
    event: dict[str, Any]
    raw: bytes
    at_ms: int


@dataclass(slots=True)
class Assembler:
    """Builds one bundle from the cache; made per request (it holds only the state)."""

    state: RouterState

    async def assemble(self, who: Principal, subject: str, policy: InjectionPolicy) -> Bundle[msgspec.Raw]:
        found: dict[str, list[dict[str, Any]]] = {}
        used = 0
        sections = []
        for section in policy.sections:
            result: Section[msgspec.Raw] = Section(section.context_type, [], Omitted())
            sections.append(result)
            ct = self.state.catalogue.context_types.get(section.context_type)
            if ct is None:
                continue
            if not who.can_read(ct.name):
                result.omitted.withheld += 1
                continue
            candidates = await self._candidates(who, ct, section, subject, found, result.omitted)
            keep = matcher(section, subject, found)
            about = resolve(section.about, subject, found) if section.about is not None else None
            chosen = [c for c in candidates if keep(c.event) and (about is None or _is_about(c.ctx.subject, about))]
            chosen.sort(key=lambda c: c.at_ms, reverse=True)
            floor = policy.min_quality if section.min_quality is None else section.min_quality
            for c in chosen[: section.top_k]:
                if c.ctx.stale and not policy.include_stale:
                    result.omitted.stale += 1
                    continue
                if floor and (c.ctx.quality is None or c.ctx.quality < floor):
                    result.omitted.quality += 1
                    continue
                tokens = -(-len(c.raw) // CHARS_PER_TOKEN)
                if used + tokens > policy.budget_tokens:
                    result.omitted.budget += 1
                    continue
                used += tokens
                result.items.append(_item(ct, self.state, c, tokens))
                found.setdefault(ct.name, []).append(c.event)
        return Bundle(subject, policy.name, policy.version, policy.budget_tokens, used, sections)

    async def _candidates(
        self, who: Principal, ct: ContextType, section: PolicySection, subject: str,
        found: dict[str, list[dict[str, Any]]], omitted: Omitted,
    ) -> list[_Candidate]:  # fmt: skip
        st = self.state
        if section.subjects is not None:
            wanted = resolve(section.subjects, subject, found)
            subjects = [str(s) for s in (wanted if isinstance(wanted, list) else [wanted])]
        else:
            members: Any = await st.redis.zrevrange(st.keys.recent(who.tenant, ct.name), 0, section.scan - 1)
            subjects = [m.decode() for m in members]
        if not subjects:
            return []
        async with st.redis.pipeline(transaction=False) as p:
            for s in subjects:
                p.hmget(st.keys.ctx(who.tenant, ct.name, s), "seq", "at", "v", "count", "sens", "q")
                if ct.kind == "stream":
                    p.lrange(st.keys.window(who.tenant, ct.name, s), 0, -1)
            rows = await p.execute()
        out = []
        step = 2 if ct.kind == "stream" else 1
        for i, s in enumerate(subjects):
            fields = rows[i * step]
            if fields[2] is None:
                continue
            if ct.kind == "stream":  # each event of the window is a candidate
                for entry in rows[i * step + 1]:
                    if st.gate.denied_by(who, ct.name, entry[0] - 48) is not None:
                        omitted.withheld += 1
                        continue
                    out.append(_candidate(st, who, ct, s, fields, entry[1:]))
            elif st.gate.denied_by(who, ct.name, int(fields[4] or 1)) is not None:
                omitted.withheld += 1
            else:
                out.append(_candidate(st, who, ct, s, fields, fields[2]))
        return out


def _candidate(
    st: RouterState, who: Principal, ct: ContextType, subject: str, fields: list[Any], raw: bytes
) -> _Candidate:
    event = orjson.loads(raw)
    at_ms = int(fields[1] or 0)
    if raw is not fields[2]:  # a window entry: its own time and sequence
        at_ms = _event_ms(event, at_ms)
        fields = [event.get("sequence", fields[0]), at_ms, raw, fields[3], fields[4], event.get("quality")]
    return _Candidate(build_context(st, who, ct, subject, fields, None), event, raw, at_ms)


def _event_ms(event: dict[str, Any], default: int) -> int:
    try:
        return ms_of(str(event["time"]))
    except (KeyError, ValueError):
        return default


def _is_about(subject: str, values: Any) -> bool:
    parts = {subject, *subject.replace("|", "/").replace(":", "/").split("/")}
    return any(str(v) in parts for v in (values if isinstance(values, list) else [values]))


def _item(ct: ContextType, st: RouterState, c: _Candidate, tokens: int) -> Item[msgspec.Raw]:
    e = c.event
    prov = Provenance(
        source=str(e.get("source", "")), id=str(e.get("id", "")), type=str(e.get("type", "")),
        provider=e.get("provider"), topic=st.settings.topic(ct.topic),
    )  # fmt: skip
    x = c.ctx  # its event is in the schema version the caller declared (build_context converts)
    return Item(ct.name, x.subject, tokens, x.as_of, x.age_ms, x.stale, x.watermark_lag_ms, prov, x.event, x.quality)


def policy_named(store: PolicyStore, spec: str, tenant: str) -> InjectionPolicy:
    """The policy ``name[@version]`` as ``tenant`` sees it (its own, else the platform's)."""
    name, _, version = spec.partition("@")
    if version and not version.isdigit():
        raise HTTPProblem(400, f"policy version must be a number: {spec[:100]!r}")
    policy = store.get(name, int(version[:18]) if version else None, tenant)
    if policy is None:
        known = ", ".join(p.name for p in store.latest(tenant))
        raise HTTPProblem(404, f"no injection policy {spec[:100]!r} (known: {known or 'none'})")
    return policy


async def assemble(request: Request) -> Response:
    st = state_of(request)
    who, trace = await caller(request, "context.assemble", "assemble")
    try:
        body = orjson.loads(await bodies.read(request))
        subject = body["subject"]
        if not isinstance(subject, str) or not subject:
            raise ValueError
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise HTTPProblem(400, 'body must be {"subject": "...", "policy": "name[@version]"}') from None
    if "inline" in body:
        st.gate.require(who, "admin", "context.assemble", "inline policy", trace)
        try:
            policy = policy_from(body["inline"], "inline")
        except ConfigError as e:
            raise HTTPProblem(400, str(e)) from None
    else:
        if not isinstance(body.get("policy"), str):
            raise HTTPProblem(400, "policy must name an injection policy (GET /v1/policies lists them)")
        policy = policy_named(st.policies, body["policy"], who.tenant)
    resource = f"{policy.name}@{policy.version}/{subject}"
    bundle = await Assembler(st).assemble(who, subject, policy)
    items = sum(len(s.items) for s in bundle.sections)
    withheld = sum(s.omitted.withheld for s in bundle.sections)
    st.gate.record_allowed(who, "context.assemble", resource, trace, f"{items} items, {withheld} withheld")
    return Response(_enc.encode(bundle), media_type="application/json")


async def list_policies(request: Request) -> Response:
    st = state_of(request)
    who, _ = await caller(request, "policies.list", "policies")
    store = st.policies
    versions = store.versions(who.tenant)
    out = [
        {"name": p.name, "version": p.version, "versions": sorted(versions[p.name]),
         "owner": "tenant" if store.owner(p.name, who.tenant) else "platform",
         "description": p.description, "sections": [s.context_type for s in p.sections]}
        for p in store.latest(who.tenant)
    ]  # fmt: skip
    return Response(_enc.encode({"policies": out}), media_type="application/json")


async def get_policy(request: Request) -> Response:
    st = state_of(request)
    who, _ = await caller(request, "policies.read", request.path_params["name"])
    policy = policy_named(st.policies, request.path_params["name"], who.tenant)
    return Response(_enc.encode(policy.model_dump(mode="json")), media_type="application/json")


async def put_policy(request: Request) -> Response:
    """Publish a new version of the caller's tenant's policy (admin scope); every router
    picks it up. It shadows the platform's policy of that name for this tenant only."""
    st = state_of(request)
    name = request.path_params["name"]
    who, trace = await caller(request, "policies.write", name)
    st.gate.require(who, "admin", "policies.write", name, trace)
    try:
        doc = orjson.loads(await bodies.read(request))
        if not isinstance(doc, dict):
            raise ValueError
    except (orjson.JSONDecodeError, ValueError):
        raise HTTPProblem(400, "body must be a policy as a JSON object") from None
    store = st.policies
    doc = {**doc, "name": name, "version": store.next_version(name, who.tenant)}
    try:
        policy = policy_from(doc, f"policy {name}")
    except ConfigError as e:
        raise HTTPProblem(400, str(e)) from None
    value = orjson.dumps(policy.model_dump(mode="json"))
    try:
        await asyncio.wait_for(
            st.producer.send_and_wait(
                st.settings.topic("registry"), value, key=f"{POLICY}{who.tenant}/{name}@{policy.version}".encode()
            ),
            st.settings.router.produce_timeout_s,
        )
    except (KafkaError, TimeoutError) as e:
        raise HTTPProblem(
            503, f"the broker did not store the policy ({type(e).__name__}); retry", {"Retry-After": "1"}
        ) from None
    store.put(policy, who.tenant)
    st.gate.record_allowed(who, "policies.write", f"{name}@{policy.version}", trace)
    return Response(_enc.encode({"name": name, "version": policy.version}), status_code=201,
                    media_type="application/json")  # fmt: skip
