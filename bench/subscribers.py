"""N WebSocket subscribers in one process, recording event -> push latency.

    python -m bench.subscribers WS_URL TENANT N SECONDS OUT_FILE

Each subscribes with ``"batch": true`` (a frame holds every change that was waiting for
it). Latency is the receive time of the frame minus the ``sent_ns`` the producer stamped
on each change in it (the moment its schedule said to send it). Writes
``OUT_FILE.ready`` once every subscriber is subscribed, and the results as JSON at the
end: changes and frames received, lagging notices, this process's CPU seconds, and the
latency histogram (base64 HDR)."""

from __future__ import annotations

import asyncio
import base64
import json
import resource
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
    counts = {"received": 0, "frames": 0, "lagging_notices": 0}
    conns = []
    for _ in range(n):
        ws = await websockets.connect(url, additional_headers=bearer(load_settings(), tenant), max_size=2**24)
        await ws.send('{"subscribe": ["metric.*"], "batch": true}')
        await ws.recv()
        conns.append(ws)
    Path(out + ".ready").write_text("ok")

    async def reader(ws: websockets.ClientConnection) -> None:
        async for msg in ws:
            now = time.time_ns()
            raw = msg if isinstance(msg, bytes) else msg.encode()
            counts["frames"] += 1
            i = raw.find(MARK)
            if i < 0 and b"lagging" in raw:
                counts["lagging_notices"] += 1
            while i >= 0:
                j = raw.find(b'"', i + len(MARK))
                record(h, (now - int(raw[i + len(MARK) : j])) / 1e9)
                counts["received"] += 1
                i = raw.find(MARK, j)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    tasks = [asyncio.create_task(reader(ws)) for ws in conns]
    await asyncio.sleep(seconds)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for t in tasks:
        t.cancel()
    for ws in conns:
        await ws.close()
    encoded = base64.b64encode(h.encode()).decode() if h.get_total_count() else ""
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    Path(out).write_text(json.dumps({**counts, **summary(h), "cpu_s": round(cpu, 3), "hist": encoded}))


if __name__ == "__main__":
    url, tenant, n, seconds, out = sys.argv[1:6]
    uvloop.run(main(url, tenant, int(n), float(seconds), out))
