"""Log lines into LogEntry: tail a file (following appends, truncation and rotation) or stdin.

A JSON line maps ``level``/``severity``/``lvl``, ``message``/``msg``, ``logger``,
``time``/``timestamp``/``ts`` and ``service`` to the LogEntry fields; every other scalar
field becomes an attribute. A line that is not JSON is the message of an INFO entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from fabric.events.envelope import Envelope
from fabric.providers.sdk import Provider

LEVELS = {"TRACE": "DEBUG", "DEBUG": "DEBUG", "INFO": "INFO", "NOTICE": "INFO", "WARN": "WARN", "WARNING": "WARN",
          "ERROR": "ERROR", "ERR": "ERROR", "CRITICAL": "FATAL", "FATAL": "FATAL", "PANIC": "FATAL"}  # fmt: skip


def _first(d: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in d:
            return d.pop(n)
    return None


def log_event(provider: Provider, line: str, service: str, origin: str, number: int) -> Envelope | None:
    """The LogEntry event of one line (None for a blank one). Ids are stable per origin and
    line number, so a restarted tailer that re-reads lines produces the same ids."""
    text = line.strip()
    if not text:
        return None
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        doc = {"message": text}
    level = str(_first(doc, "level", "severity", "lvl") or "INFO").upper()
    message = _first(doc, "message", "msg")
    logger = _first(doc, "logger", "logger_name")
    when = _first(doc, "time", "timestamp", "ts", "@timestamp")
    svc = str(_first(doc, "service") or service)
    attributes = {k: v for k, v in doc.items() if v is None or isinstance(v, bool | int | float | str)}
    data: dict[str, Any] = {"service": svc, "level": LEVELS.get(level, "INFO"), "attributes": attributes,
                            "message": str(message if message is not None else text)}  # fmt: skip
    if logger is not None:
        data["logger"] = str(logger)
    ev_id = hashlib.sha1(f"{origin}:{number}:{text}".encode()).hexdigest()[:24]
    attrs: dict[str, Any] = {"id": ev_id}
    if isinstance(when, str):
        attrs["time"] = when
    return provider.event("log.entry", svc, data, **attrs)


async def follow(path: Path, poll_s: float = 0.2, from_start: bool = True) -> AsyncIterator[tuple[int, str]]:
    """(line number, line) of a file as it grows; starts over when it is truncated or replaced.
    While the file is idle it yields ``(0, "")`` every ``poll_s``, so a batch never waits."""
    handle = None
    inode = None
    number = 0
    pending = ""
    while True:
        if handle is None:
            try:
                handle = path.open("r", encoding="utf-8", errors="replace")
                inode = os.fstat(handle.fileno()).st_ino
                if not from_start:
                    handle.seek(0, os.SEEK_END)
                number, pending = 0, ""
            except FileNotFoundError:
                await asyncio.sleep(poll_s)
                continue
        chunk = handle.read(1 << 16)
        if chunk:
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                number += 1
                yield number, line
            continue
        await asyncio.sleep(poll_s)
        yield 0, ""
        try:
            st = os.stat(path)
            if st.st_ino != inode or st.st_size < handle.tell():  # rotated or truncated
                handle.close()
                handle, from_start = None, True
        except FileNotFoundError:
            pass


async def stdin_lines() -> AsyncIterator[tuple[int, str]]:
    loop = asyncio.get_running_loop()
    number = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        number += 1
        yield number, line


async def tail(provider: Provider, lines: AsyncIterator[tuple[int, str]], service: str, origin: str,
               batch: int = 500, flush_s: float = 0.2) -> None:  # fmt: skip
    """Publish the lines as they come, in batches (at most ``flush_s`` late)."""
    waiting: list[Envelope] = []
    loop = asyncio.get_running_loop()
    last = loop.time()
    async for number, line in lines:
        ev = log_event(provider, line, service, origin, number)
        if ev is not None:
            waiting.append(ev)
        if waiting and (len(waiting) >= batch or loop.time() - last >= flush_s):
            await provider.publish_many(waiting)
            waiting, last = [], loop.time()
    if waiting:
        await provider.publish_many(waiting)
