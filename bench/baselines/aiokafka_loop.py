"""Baseline: a plain aiokafka getmany -> send loop over the same events (no decoding).

python -m bench.baselines.aiokafka_loop BOOTSTRAP IN_TOPIC OUT_TOPIC PROGRESS_FILE
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def main(bootstrap: str, in_topic: str, out_topic: str, progress: str) -> None:
    consumer = AIOKafkaConsumer(
        in_topic, bootstrap_servers=bootstrap, group_id=f"bench-aiokafka-{in_topic}", auto_offset_reset="earliest",
        enable_auto_commit=False, fetch_max_wait_ms=5, max_partition_fetch_bytes=4 << 20,
        session_timeout_ms=3000, heartbeat_interval_ms=600,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, max_batch_size=512 * 1024)
    await consumer.start()
    await producer.start()
    count, last = 0, 0.0
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=2000)
            futures = [await producer.send(out_topic, r.value, key=r.key) for recs in batch.values() for r in recs]
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
                count += len(futures)
            if time.monotonic() - last > 0.25:
                Path(progress).write_text(str(count))
                last = time.monotonic()
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    uvloop.run(main(*sys.argv[1:5]))
