"""N WebSocket subscribers in one process, recording event -> push latency.

    python -m bench.subscribers WS_URL TENANT N SECONDS OUT_FILE

Latency is the receive time minus the ``sent_ns`` the producer stamped on the event
(the moment its schedule said to send it). Writes ``OUT_FILE.ready`` once every
subscriber is subscribed, and the results as JSON at the end."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path

import uvloop
import websockets

from bench.hist import histogram, record, summary
from fabric.settings import load_settings
from fabric.testing import bearer

MARK = b'"sent_ns":"'


async def main(url: str, tenant: str, n: int, seconds: float, out: str) -> None:
    h = histogram()
    counts = {"received": 0, "lagging_notices": 0}
    conns = []
    for _ in range(n):
        ws = await websockets.connect(url, additional_headers=bearer(load_settings(), tenant), max_size=2**22)
        await ws.send('{"subscribe": ["metric.*"]}')
        await ws.recv()
        conns.append(ws)
    Path(out + ".ready").write_text("ok")

    async def reader(ws: websockets.ClientConnection) -> None:
        async for msg in ws:
            now = time.time_ns()
            raw = msg if isinstance(msg, bytes) else msg.encode()
            i = raw.find(MARK)
            if i < 0:
                if b"lagging" in raw:  # fell behind: the rest comes from the feed, later
                    counts["lagging_notices"] += 1
                continue
            j = raw.find(b'"', i + len(MARK))
            record(h, (now - int(raw[i + len(MARK) : j])) / 1e9)
            counts["received"] += 1

    tasks = [asyncio.create_task(reader(ws)) for ws in conns]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    for ws in conns:
        await ws.close()
    encoded = base64.b64encode(h.encode()).decode() if h.get_total_count() else ""
    Path(out).write_text(json.dumps({**counts, **summary(h), "hist": encoded}))


if __name__ == "__main__":
    url, tenant, n, seconds, out = sys.argv[1:6]
    uvloop.run(main(url, tenant, int(n), float(seconds), out))
