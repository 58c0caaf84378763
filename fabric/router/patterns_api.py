"""``/v1/patterns``: a tenant's CEP patterns over HTTP (what ``fabric patterns`` does), for
the console and scripts.

- ``GET /v1/patterns``: the patterns the tenant's events meet (the platform's, shadowed by
  its own), each with its owner;
- ``POST /v1/patterns`` with ``{"yaml": "..."}`` (scope ``registry:write``): validated as a
  whole, then published as the tenant's own; a bad pattern is a 422 naming the pattern,
  the field and the problem, and nothing of the file is published;
- ``DELETE /v1/patterns/NAME``: removes the tenant's own pattern (a platform pattern is not
  the tenant's to remove).

The YAML is parsed off the event loop and is at most ``bodies.YAML_BYTES``: a pattern file is small.
"""

from __future__ import annotations

import asyncio

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response

from fabric.cep.patterns import PatternError, load_patterns
from fabric.registry.store import PATTERN
from fabric.router import bodies
from fabric.router.problems import HTTPProblem
from fabric.router.registry_api import _reader, _store, _writer

KINDS = ("sequence", "absence", "aggregate")
_enc = msgspec.json.Encoder()


def _json(body: object, status: int = 200) -> Response:
    return Response(_enc.encode(body), status_code=status, media_type="application/json")


async def list_patterns(request: Request) -> Response:
    st, who, _ = await _reader(request)
    store = st.schemas.store
    out = [
        {"name": name, "version": spec.get("version", 1), "kind": next((k for k in KINDS if k in spec), "?"),
         "owner": "tenant" if f"{who.tenant}/{name}" in store.patterns else "platform", "spec": spec}
        for name, spec in sorted(store.patterns_of(who.tenant).items())
    ]  # fmt: skip
    return _json({"patterns": out})


async def apply_patterns(request: Request) -> Response:
    st, who, trace = await _writer(request)
    text = await bodies.read_yaml(request, "patterns")
    try:
        compiled = await asyncio.to_thread(load_patterns, text)
    except PatternError as e:
        return _json({"error": str(e), "pattern": e.pattern, "field": e.field, "problem": e.problem}, 422)
    for p in compiled:
        key = f"{PATTERN}{who.tenant}/{p.name}"
        await _store(st, key, orjson.dumps(p.source))
        st.gate.record_allowed(who, "registry.write", key, trace)
    return _json({"applied": [p.name for p in compiled]}, 201)


async def remove_pattern(request: Request) -> Response:
    st, who, trace = await _writer(request)
    name = request.path_params["name"]
    key = f"{PATTERN}{who.tenant}/{name}"
    if f"{who.tenant}/{name}" not in st.schemas.store.patterns:
        raise HTTPProblem(404, f"the tenant has no pattern {name[:100]!r} of its own")
    await _store(st, key, None)
    st.gate.record_allowed(who, "registry.write", key, trace)
    return _json({"removed": name})
