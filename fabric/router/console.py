"""The web console: the files under ``fabric/console/``, served at ``/console``.

The page itself is public (it holds no data); everything it shows comes from the same
``/v1/...`` endpoints a copilot or a script calls, with the bearer token the person
signs in with, so the console sees exactly what the token's tenant and scopes allow.
The assets are shipped in the package and served as they are: nothing is built at
run time. A strict Content-Security-Policy keeps the page to its own scripts.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from fabric.errors import BackendUnavailable
from fabric.router.flow import flow
from fabric.router.problems import HTTPProblem
from fabric.router.state import caller, state_of

ASSETS = Path(__file__).resolve().parent.parent / "console"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src {connect}; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP.format(connect="'self'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
_enc = msgspec.json.Encoder()


def _files() -> dict[str, Path]:
    """The assets by URL path: the console's own files and vendor/, nothing else (not the
    lint's node_modules/ or its configuration)."""
    found = [*ASSETS.glob("*"), *ASSETS.glob("vendor/*")]
    return {p.relative_to(ASSETS).as_posix(): p for p in found
            if p.is_file() and p.suffix in TYPES and p.name != "eslint.config.mjs"}  # fmt: skip


FILES = _files()


async def page(request: Request) -> Response:
    """The page; with an OIDC issuer configured, it may also connect to the issuer (its token
    endpoint), which is where the sign-in trades its code for a token."""
    signin = state_of(request).signin
    if signin.enabled:
        with contextlib.suppress(BackendUnavailable):
            await signin.config()  # learn the token endpoint's origin
    connect = " ".join(["'self'", *signin.connect_sources()])
    headers = {**HEADERS, "content-security-policy": CSP.format(connect=connect)}
    return FileResponse(ASSETS / "index.html", media_type=TYPES[".html"], headers=headers)


async def asset(request: Request) -> Response:
    path = FILES.get(request.path_params["path"])
    if path is None:
        raise HTTPProblem(404, "no such console file")
    return FileResponse(path, media_type=TYPES[path.suffix], headers=HEADERS)


async def me(request: Request) -> Response:
    """Who the token is: the console shows the tenant and hides what the scopes do not allow."""
    st = state_of(request)
    who, _ = await caller(request, "console.me", "console")
    readable = sorted(name for name in st.catalogue.context_types if who.can_read(name))
    body = {
        "tenant": who.tenant,
        "subject": who.sub,
        "scopes": sorted(who.scopes),
        "expires": who.expires,
        "context_types": readable,
    }
    return Response(_enc.encode(body), media_type="application/json")


async def config(request: Request) -> Response:
    """How to sign in (public: the page needs it before anyone has a token)."""
    try:
        body = await state_of(request).signin.config()
    except BackendUnavailable as e:
        raise HTTPProblem(503, str(e), {"Retry-After": "30"}) from None
    return Response(_enc.encode(body), media_type="application/json")


ROUTES = [
    Route("/console", page, methods=["GET"]),
    Route("/console/", page, methods=["GET"]),
    Route("/console/{path:path}", asset, methods=["GET"]),
    Route("/v1/console/config", config, methods=["GET"]),
    Route("/v1/console/me", me, methods=["GET"]),
    Route("/v1/console/flow", flow, methods=["GET"]),
]
