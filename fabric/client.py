"""The consumer SDK: what a copilot uses to read context.

    async with ContextClient("http://127.0.0.1:8700", token) as fabric:
        page = await fabric.get("PageDSL", "orders-list")
        bundle = await fabric.assemble("orders-list", policy="page-copilot")
        async for change in fabric.subscribe(["page.*"]):
            ...

Results are typed (msgspec structs); errors are ``Unauthorized`` (401), ``Forbidden``
(403), ``NotFound`` (404), ``RateLimited`` (429, with ``retry_after``) and
``Unavailable`` (503 or unreachable), all ``ClientError`` (``fabric.errors.Refused``, the
same classes the router raises). ``subscribe`` reconnects
with exponential backoff and resumes from the last change it yielded, so a dropped
connection loses nothing within the fabric's retention window.
"""

from __future__ import annotations

import asyncio
import builtins
import random
import urllib.parse
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import httpx
import msgspec
import orjson
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fabric import contract
from fabric.errors import BackendUnavailable, Forbidden, NotFound, RateLimited, Refused, Unauthorized

__all__ = [
    "Bundle", "ClientError", "Context", "ContextClient", "Forbidden", "NotFound", "RateLimited",
    "Unauthorized", "Unavailable", "Update",
]  # fmt: skip


ClientError = Refused


class Unavailable(Refused, BackendUnavailable):
    """The fabric answered 5xx or could not be reached (``status`` 0); trying later may work.
    Both a refusal (it has a ``status``) and a ``BackendUnavailable``."""

    status = 503
    retriable = True


# The router's answer shapes (fabric.contract), with events decoded to dicts.
Event = dict[str, Any]
Context = contract.Context[Event]
ContextList = contract.ContextList[Event]
Update = contract.Update[Event]
Item = contract.Item[Event]
Bundle = contract.Bundle[Event]


def subject_path(subject: str) -> str:
    """A subject as one URL path segment: every reserved character escaped, dots too, so
    that ``..`` or ``a/b`` reach the router as the subject they are."""
    return urllib.parse.quote(subject, safe="").replace(".", "%2E")


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        message = r.json().get("error", r.text)
    except ValueError:
        message = r.text
    if r.status_code == 401:
        raise Unauthorized(message)
    if r.status_code == 403:
        raise Forbidden(message)
    if r.status_code == 404:
        raise NotFound(message)
    if r.status_code == 429:
        ra = r.headers.get("retry-after", "1")
        raise RateLimited(message, int(ra) if ra.isdigit() else 1)
    if r.status_code >= 500:
        raise Unavailable(message, r.status_code)
    raise Refused(message, r.status_code)


class ContextClient:
    def __init__(self, url: str, token: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        #: non-change messages received by ``subscribe`` (lagging, gap, heartbeat), newest last
        self.notices: builtins.list[dict[str, Any]] = []
        self._http = httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    async def __aenter__(self) -> ContextClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> bytes:
        try:
            r = await self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise Unavailable(f"cannot reach the fabric at {self.url}: {e}", 0) from e
        _raise_for(r)
        return r.content

    async def get(self, context_type: str, subject: str) -> Context:
        """The latest context of a subject, with its freshness."""
        body = await self._request("GET", f"/v1/contexts/{context_type}/{subject_path(subject)}")
        return msgspec.json.decode(body, type=Context)

    async def list(self, context_type: str, limit: int = 20) -> list[Context]:
        """The most recently changed subjects of a type."""
        body = await self._request("GET", f"/v1/contexts/{context_type}", params={"limit": limit})
        return msgspec.json.decode(body, type=ContextList).items

    async def composites(
        self, pattern: str | None = None, since: str | None = None, limit: int = 20
    ) -> builtins.list[Context]:
        params: dict[str, Any] = {"limit": limit}
        if pattern:
            params["pattern"] = pattern
        if since:
            params["since"] = since
        body = await self._request("GET", "/v1/composites", params=params)
        return msgspec.json.decode(body, type=ContextList).items

    async def assemble(self, subject: str, policy: str) -> Bundle:
        """The prompt bundle for ``subject`` under a named injection policy (``name`` or ``name@version``)."""
        body = await self._request("POST", "/v1/assemble", json={"subject": subject, "policy": policy})
        return msgspec.json.decode(body, type=Bundle)

    async def policies(self) -> builtins.list[dict[str, Any]]:
        result: builtins.list[dict[str, Any]] = orjson.loads(await self._request("GET", "/v1/policies"))["policies"]
        return result

    async def subscribe(
        self,
        patterns: builtins.list[str],
        *,
        resume: str | None = None,
        max_backoff: float = 10.0,
        give_up_after: float | None = None,
    ) -> AsyncIterator[Update]:
        """Changes matching ``patterns`` (globs over event types), forever. Reconnects with
        backoff and resumes after the last change yielded. Notices (lagging, gap) are
        logged on ``self.notices``. Raises Unauthorized/Forbidden at once; gives up on
        other failures after ``give_up_after`` seconds without a connection, if set."""
        ws_url = self.url.replace("http", "ws", 1) + "/v1/subscribe"
        backoff = 0.1
        down_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with websockets.connect(
                    ws_url, additional_headers={"Authorization": f"Bearer {self.token}"}, max_size=None
                ) as ws:
                    # several changes per frame when this client is behind (docs/serving.md)
                    request: dict[str, Any] = {"subscribe": patterns, "batch": True}
                    if resume:
                        request["resume"] = resume
                    await ws.send(orjson.dumps(request).decode())
                    async for raw in ws:
                        frame = orjson.loads(raw)
                        for msg in frame if isinstance(frame, list) else (frame,):
                            if "resume" in msg:
                                update = msgspec.convert(msg, Update)
                                resume = update.resume
                                backoff, down_since = 0.1, None
                                yield update
                            elif "error" in msg and "disconnected" not in msg:
                                raise Refused(msg["error"], 400)
                            else:
                                self.notices.append(msg)
                                backoff, down_since = 0.1, None
                    close = ws.close_code
                    if close in (4401, 4403):
                        raise (Unauthorized if close == 4401 else Forbidden)(ws.close_reason or "")
            except InvalidStatus as e:
                _raise_for(httpx.Response(e.response.status_code, content=bytes(e.response.body or b"")))
            except (OSError, ConnectionClosed, TimeoutError):
                pass
            down_since = down_since or loop.time()
            if give_up_after is not None and loop.time() - down_since > give_up_after:
                raise Unavailable(f"no connection to {ws_url} for {give_up_after} s", 0)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(max_backoff, backoff * 2)
