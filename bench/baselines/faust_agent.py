"""Baseline: a bare Faust agent over the same events, forwarding each with ``topic.send``
(or only consuming). Writes its progress to a file four times a second.

    python -m bench.baselines.faust_agent BOOTSTRAP IN_TOPIC OUT_TOPIC PROGRESS_FILE [forward|consume]
"""

from __future__ import annotations

import sys
from pathlib import Path

import faust

bootstrap, in_topic, out_topic, progress, mode = sys.argv[1:6]
app = faust.App(
    f"bench-faust-{mode}-{in_topic}", broker=f"kafka://{bootstrap}", store="memory://", web_enabled=False,
    topic_partitions=4, broker_session_timeout=3, broker_heartbeat_interval=0.5, broker_rebalance_timeout=3,
    consumer_auto_offset_reset="earliest",
)  # fmt: skip
source = app.topic(in_topic, value_type=bytes, value_serializer="raw")
sink = app.topic(out_topic, value_type=bytes, value_serializer="raw")
count = 0


@app.agent(source)
async def agent(stream: faust.StreamT[bytes]) -> None:
    global count
    async for value in stream:
        if mode == "forward":
            await sink.send(value=value)
        count += 1


@app.timer(0.25)
async def report() -> None:
    Path(progress).write_text(str(count))


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
