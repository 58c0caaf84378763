"""What every worker stage shares: a ``mode`` service around one consumer-group batch loop
(``Stage``), the same with one Kafka transaction per batch (``TransactionalStage``), and
the worker's slot number that keeps a transactional id across restarts (``WorkerSlot``).

Each stage is a plain aiokafka consumer-group loop (``getmany`` -> batch logic ->
batched sends or one Redis script call -> commit), because Faust's per-message
stream path tops out near 10k events/s on these machines while a batch loop moves
several times that (bench/worker.py measures both). The stages themselves sit beside
their logic: ``pipeline/route.py``, ``pipeline/materialize_stage.py``, ``cep/stage.py``.
"""

from __future__ import annotations

import abc
import asyncio
import fcntl
import logging
import socket
from collections import deque
from pathlib import Path
from typing import Any

import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from fabric import kafka
from fabric.events.catalogue import Catalogue
from fabric.kafka.send import OutRecord, send_all, send_batches
from fabric.registry.store import RegistryFollower, SchemaStore
from fabric.retry import until_done
from fabric.settings import Settings

log = logging.getLogger(__name__)

EVENTS = Counter("fabric_worker_events_total", "Events handled by a stage", ["stage", "outcome"])
BATCH_SECONDS = Histogram(
    "fabric_worker_batch_seconds", "Time to handle one batch", ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)  # fmt: skip


class SchemaService(mode.Service):
    """Follows the schema registry topic for the worker's stages (started before them)."""

    def __init__(self, settings: Settings, catalogue: Catalogue, **kw: Any) -> None:
        self.follower = RegistryFollower(settings, SchemaStore(catalogue))
        super().__init__(**kw)

    async def on_start(self) -> None:
        await self.follower.start()

    async def on_stop(self) -> None:
        await self.follower.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """A rebalance waits for the batch in flight, so its transaction (records and offsets)
    commits before the partitions move and the next owner starts after it; a batch whose
    fetch a rebalance overlapped is dropped and the partitions read again from the
    committed offsets (``Stage._run``), so no two owners handle one record."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.stage.batch_lock:
            self.stage.epoch += 1
            await self.stage.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        async with self.stage.batch_lock:
            self.stage.epoch += 1
            await self.stage.assigned(list(assigned))


class Stage(mode.Service):
    """Shared loop: fetch a batch, handle it, commit; back off on broker errors."""

    stage = "stage"

    def __init__(
        self, settings: Settings, catalogue: Catalogue, follower: RegistryFollower | None = None, **kw: Any
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.follower = follower
        self.consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.batches = 0
        self.batch_lock = asyncio.Lock()  # a batch and a rebalance never interleave
        self.epoch = 0  # counts rebalances
        #: a transaction was abandoned outside the loop (at a rebalance): rewind before going on
        self.rewind_needed = False
        super().__init__(**kw)

    def subscribe(self, topics: list[str], group: str) -> AIOKafkaConsumer:
        """A group consumer of ``topics`` whose rebalances this stage hears of (see ``_Rebalance``)."""
        consumer = kafka.consumer(self.settings, group=group)
        consumer.subscribe(topics, listener=_Rebalance(self))
        return consumer

    async def revoked(self, tps: list[TopicPartition]) -> None:
        """Partitions about to move away (the batch in flight has finished)."""

    async def assigned(self, tps: list[TopicPartition]) -> None:
        """Partitions this stage now owns."""

    @abc.abstractmethod
    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        """Process one ``getmany`` batch; each stage says what that means."""

    async def tick(self) -> None:
        """Called between batches; stages override it for periodic work."""

    def next_tick_ms(self) -> int:
        """How long the stage may wait for records before its ``tick`` has something to do.
        A fetch returns as soon as records come, so waiting long costs no latency; it is what
        keeps an idle stage from waking ten times a second."""
        return 1000

    async def commit(self, batch: dict[Any, list[Any]]) -> None:
        """Mark the batch done in the consumer group (after ``handle`` succeeded)."""
        assert self.consumer is not None
        await self.consumer.commit()

    async def on_started(self) -> None:
        self.add_future(self._run())

    async def _run(self) -> None:
        assert self.consumer is not None
        # Joining the group waits for the broker's rebalance; doing it here, not in
        # on_start, lets every stage of the worker join at the same time.
        await kafka.start(self.settings, self.consumer)
        wait = self.settings.worker.batch_wait_ms
        while not self.should_stop:
            try:
                if self.rewind_needed:
                    self.rewind_needed = False
                    await self._rewind()
                await self.tick()
                epoch = self.epoch
                batch = await self.consumer.getmany(
                    timeout_ms=max(wait, self.next_tick_ms()), max_records=self.settings.worker.batch_max
                )
                if not batch:
                    continue
                async with self.batch_lock:
                    stale = self.epoch != epoch
                    if not stale:
                        await self._handle(batch)
                if stale:
                    # A rebalance came while fetching: the batch may hold records of partitions
                    # this stage no longer owns, so it is dropped and every partition read again
                    # from the committed offsets (the fetch positions moved past the batch).
                    await self._rewind()
                    continue
                self.batches += 1
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, RedisError) as e:
                # Not committed: the batch is fetched again after a seek to the committed offsets.
                log.warning("%s: %s; retrying the batch in 1 s", self.stage, e)
                self.rewind_needed = False
                await self._rewind()
                await asyncio.sleep(1.0)

    async def _handle(self, batch: dict[Any, list[Any]]) -> None:
        if self.follower and self.follower.store.unknown_ids(r.value for rs in batch.values() for r in rs):
            await self.follower.catch_up()  # a schema version registered moments ago
        with BATCH_SECONDS.labels(self.stage).time():
            await self.handle(batch)
        await self.commit(batch)

    async def _rewind(self) -> None:
        """Go back to the committed offsets; keeps trying, since going on would skip records."""
        assert self.consumer is not None
        async for attempt in until_done(f"{self.stage}: rewind", KafkaError, stop=lambda: self.should_stop):
            with attempt:
                for tp in self.consumer.assignment():
                    committed = await self.consumer.committed(tp)
                    if committed is None:
                        await self.consumer.seek_to_beginning(tp)
                    else:
                        self.consumer.seek(tp, committed)


class TransactionalStage(Stage):
    """A stage that consumes, produces and commits its input offsets in Kafka transactions
    (consume-transform-produce), so a worker killed mid-transaction leaves nothing that
    ``read_committed`` readers see, and the next owner of the partitions handles those
    records again.

    As Kafka Streams does, a transaction spans the batches of ``worker.commit_interval_ms``:
    each batch's records are handed to the producer and the stage fetches again at once,
    without waiting for acknowledgements; every interval (and before partitions move, and
    at stop) the deliveries are awaited and the transaction commits with the consumed
    offsets. A commit costs several broker round trips and, on Apache Kafka, the previous
    commit's markers must be written before the next transaction can add partitions
    (tens of ms); paid once per interval, not once per batch, that stays off the latency
    of each record. Readers that ``read_uncommitted`` (the materializer) see records as
    soon as they are written. The transactional id is this worker's slot for the stage
    (``WorkerSlot``): a worker restarted after a crash takes the same one, which makes
    the broker abort the dead worker's open transaction at once instead of after
    ``transaction_timeout_ms``. On a broker without transactions (Tansu) records are
    sent, then the offsets committed."""

    group = ""
    transactional_id: str | None = None
    #: batches of records being handed to the producer at most; past that the stage waits
    #: (a slow broker holds it back instead of growing memory)
    MAX_SENDING = 16
    _in_txn = False
    _sending: deque[asyncio.Task[None]]
    _txn_started = 0.0
    _deliveries: list[asyncio.Future[Any]]
    _txn_offsets: dict[TopicPartition, int]

    async def open_transactions(self, group: str) -> None:
        s = self.settings
        self.group = group
        self._sending = deque()
        if s.kafka.transactions:
            self._slot = WorkerSlot.claim(s.data_dir / "run", self.stage)
            self.transactional_id = f"{group}.{socket.gethostname()}.{self._slot.number}"
        await self._open_producer()

    async def _open_producer(self) -> None:
        if self.transactional_id is None:
            self._producer = self.producer = kafka.producer(self.settings)
        else:
            self._producer = self.producer = kafka.producer(
                self.settings,
                transactional_id=self.transactional_id,
                transaction_timeout_ms=self.settings.kafka.transaction_timeout_ms,
            )
        await kafka.start(self.settings, self.producer)

    async def produce(
        self, records: list[OutRecord], offsets: dict[TopicPartition, int], *, finish: bool = False
    ) -> None:
        """Send ``records`` and mark ``offsets`` consumed, together: in the open transaction,
        committed once the interval is over (or now, with ``finish``). See the class."""
        if self.transactional_id is None:
            await send_all(self.producer, records)
            return
        try:
            if not self._in_txn:
                await self.producer.begin_transaction()
                self._in_txn, self._txn_started = True, asyncio.get_running_loop().time()
                self._deliveries, self._txn_offsets, self._sending = [], {}, deque()
            # Handed over in the background, in order: aiokafka takes a partition's next batch
            # only once the previous one is acknowledged (one in flight per partition with
            # idempotence), so waiting here would stop the stage fetching for a broker round
            # trip per batch. Failures surface below or at the commit (the transaction aborts).
            previous = self._sending[-1] if self._sending else None
            self._sending.append(asyncio.create_task(self._send_after(previous, records)))
            self._txn_offsets.update(offsets)
            while self._sending and (len(self._sending) > self.MAX_SENDING or self._sending[0].done()):
                await self._sending.popleft()
        except KafkaError:
            await self._abandon()
            raise
        if finish or self._txn_due():
            await self.finish_transaction()

    async def _send_after(self, previous: asyncio.Task[None] | None, records: list[OutRecord]) -> None:
        if previous is not None:
            await previous  # keeps each partition's order (and fails with it)
        self._deliveries += await send_batches(self.producer, records)

    def next_tick_ms(self) -> int:
        """An open transaction commits on time; otherwise nothing is due."""
        if not self._in_txn:
            return super().next_tick_ms()
        left = self.settings.worker.commit_interval_ms / 1000 - (asyncio.get_running_loop().time() - self._txn_started)
        return max(1, int(left * 1000))

    def _txn_due(self) -> bool:
        interval = self.settings.worker.commit_interval_ms / 1000
        return self._in_txn and asyncio.get_running_loop().time() - self._txn_started >= interval

    async def finish_transaction(self) -> None:
        """Wait for the open transaction's deliveries, then commit it with its offsets."""
        if not self._in_txn:
            return
        try:
            while self._sending:
                await self._sending.popleft()
            await asyncio.gather(*self._deliveries)
            if self._txn_offsets:
                await self.producer.send_offsets_to_transaction(self._txn_offsets, self.group)
            await self.producer.commit_transaction()
            self._in_txn = False
        except KafkaError:
            await self._abandon()
            raise

    async def _abandon(self) -> None:
        """The transaction failed (aborted, or the producer can no longer be used: fenced,
        timed out): a new producer with the same id starts clean; the stage rewinds to the
        committed offsets and handles those records again."""
        self._in_txn = False
        for t in self._sending:
            t.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        self._deliveries, self._txn_offsets, self._sending = [], {}, deque()
        self.rewind_needed = True
        await self.producer.stop()
        await self._open_producer()

    async def tick(self) -> None:
        """Commit the open transaction once its interval is over, even without traffic."""
        if self._txn_due():
            async with self.batch_lock:
                await self.finish_transaction()

    async def revoked(self, tps: list[TopicPartition]) -> None:
        """Before partitions move: what was handled of them commits (the next owner starts after it)."""
        await self.finish_transaction()

    async def commit(self, batch: dict[Any, list[Any]]) -> None:
        if self.transactional_id is None:
            await super().commit(batch)  # else the offsets were committed with the transaction

    async def on_stop(self) -> None:
        if self._in_txn:
            try:
                async with self.batch_lock:
                    await self.finish_transaction()
            except KafkaError as e:
                log.warning("%s: the last transaction did not commit (%s); the next owner redoes it", self.stage, e)
        if self.consumer:
            await self.consumer.stop()
        if self._producer is not None:
            await self._producer.stop()


class WorkerSlot:
    """A small number this worker holds while it runs, the lowest one free on this host
    and data dir: an exclusive lock on ``<run_dir>/<name>-<n>.lock``. The kernel drops the
    lock when the process dies, however it dies, so a restarted worker gets the same number."""

    def __init__(self, number: int, handle: Any) -> None:
        self.number = number
        self._handle = handle

    @classmethod
    def claim(cls, run_dir: Path, name: str, limit: int = 1024) -> WorkerSlot:
        run_dir.mkdir(parents=True, exist_ok=True)
        for n in range(limit):
            handle = (run_dir / f"{name}-{n}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return cls(n, handle)
        raise RuntimeError(f"more than {limit} {name} workers share {run_dir}")
