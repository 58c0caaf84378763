"""Request bodies, bounded: ``read`` stops at a limit (every endpoint that takes a body reads
it with this), and splitting a ``POST /v1/events`` body into events off the event loop when big.

A body is one CloudEvent, a JSON array of them, or NDJSON. Splitting costs little per
byte but something per element, so a body made of millions of tiny elements (``1\\n``
repeated, ``[1,1,...]``) could hold the router's event loop for seconds. Bodies up to
``INLINE_BYTES`` (at most some 64,000 elements, a few milliseconds) are split on the
loop; larger ones in a helper process, so the loop stays free, and a body holding more
than the request's event limit is refused there with its count.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import msgspec
import orjson
from starlette.requests import Request

from fabric.errors import FabricError
from fabric.router.problems import HTTPProblem

#: the bodies of the JSON endpoints other than ``/v1/events`` (a policy, a schema, a manifest)
JSON_BYTES = 1024 * 1024
#: a pattern or workflow file sent as ``{"yaml": "..."}``: such files are small
YAML_BYTES = 64 * 1024

#: bodies up to this size are split on the event loop (a few ms at worst)
INLINE_BYTES = 128 * 1024

_raws = msgspec.json.Decoder(list[msgspec.Raw])
_pool: ProcessPoolExecutor | None = None


class TooMany(FabricError, ValueError):
    """More events in the body than one request may carry."""


async def read(request: Request, limit: int = JSON_BYTES) -> bytes:
    """The request's body, refused (413) past ``limit`` bytes: as soon as its declared length
    says so, else as soon as that many bytes have come; never held whole when too big."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"body is {declared[:20]} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_yaml(request: Request, what: str) -> str:
    """The YAML text of a ``{"yaml": "..."}`` body (``what`` names its contents in the 400)."""
    raw = await read(request, YAML_BYTES)
    try:
        text = orjson.loads(raw)["yaml"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = None
    if not isinstance(text, str):
        raise HTTPProblem(400, f'body must be {{"yaml": "<the {what} as YAML>"}}')
    return text


def split(body: bytes, ndjson: bool, max_events: int) -> list[bytes]:
    """The body's elements as raw JSON (not yet parsed); raises TooMany, or ValueError when
    the body as a whole is not JSON (an NDJSON line that is not is kept, to be named)."""
    if ndjson:
        lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
        if lines > max_events:
            raise TooMany(f"the body holds {lines} lines, over the limit of {max_events} events per request")
        return [ln for ln in body.split(b"\n") if ln.strip()]
    if body.lstrip()[:1] == b"[":
        try:
            items = _raws.decode(body)
        except msgspec.DecodeError as e:
            raise ValueError(str(e)) from None
        except RecursionError:
            raise ValueError("JSON is nested too deeply") from None
        if len(items) > max_events:
            raise TooMany(f"the body holds {len(items)} events, over the limit of {max_events} per request")
        return [bytes(r) for r in items]
    return [body]


def start() -> ProcessPoolExecutor:
    """The helper process, started now if it is not running (starting it holds the event
    loop for some 20 ms, so the router does it while it starts, not on a request)."""
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        _pool.submit(int)  # spawn it now
    return _pool


async def split_off_loop(body: bytes, ndjson: bool, max_events: int) -> list[bytes]:
    """``split``, in the helper process when the body is big."""
    if len(body) <= INLINE_BYTES:
        return split(body, ndjson, max_events)
    return await asyncio.get_running_loop().run_in_executor(start(), split, body, ndjson, max_events)


def shutdown() -> None:
    """Stop the helper process (it is started on first use)."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
        _pool = None
