"""The Python provider SDK: ``await provider.publish(event)``.

Events are validated locally against the catalogue (a bad event raises
``InvalidEvent`` naming the field before anything is sent), produced to
``ctx.ingest`` as CloudEvents JSON keyed ``tenant/subject``, batched by the producer
(``linger_ms``), and retried with backoff on broker errors. ``publish_many`` sends
the valid events of a list and reports the rest; what could not be delivered after
the retries is raised as ``PublishError`` listing every failed event id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError

from fabric import kafka
from fabric.errors import InvalidEvent, PublishError
from fabric.events.catalogue import Catalogue
from fabric.events.codecs import validate
from fabric.events.envelope import Envelope, make_event, to_json
from fabric.events.headers import PROVIDER_HEADER
from fabric.settings import Settings


@dataclass
class PublishReport:
    sent: list[str] = field(default_factory=list)
    invalid: list[tuple[str, InvalidEvent]] = field(default_factory=list)


class Provider:
    """A producer of context changes for one source and tenant."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: str,
        tenant: str,
        catalogue: Catalogue | None = None,
        linger_ms: int = 5,
        retries: int = 5,
        retry_backoff_s: float = 0.2,
        delivery_timeout_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.source = source
        self.tenant = tenant
        self.catalogue = catalogue or Catalogue.load(settings.schemas_dir)
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.delivery_timeout_s = delivery_timeout_s
        self.topic = settings.topic("ingest")
        self._producer = kafka.producer(
            settings, client_id=f"provider-{source}", linger_ms=linger_ms,
            request_timeout_ms=int(delivery_timeout_s * 1000),
            enable_idempotence=False,  # as the router's: a timed-out request can wedge it (aiokafka 0.14)
        )  # fmt: skip
        self._headers = [(PROVIDER_HEADER, source.encode())]

    async def start(self) -> None:
        await kafka.start(self.settings, self._producer)

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> Provider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def event(self, type: str, subject: str, data: Any, **attrs: Any) -> Envelope:
        """Build an envelope of this provider's source and tenant."""
        return make_event(type, subject, data, tenant=self.tenant, source=self.source, **attrs)

    def check(self, event: Envelope) -> None:
        """Validate locally; raises ``InvalidEvent`` with the JSON pointer of the problem."""
        if event.tenant != self.tenant:
            raise InvalidEvent(f"tenant {event.tenant!r} is not this provider's {self.tenant!r}", "/tenant")
        validate(event, self.catalogue)

    async def publish(self, event: Envelope) -> None:
        """Validate, send and wait until the broker has the event."""
        self.check(event)
        await self._deliver([event])

    async def publish_many(self, events: list[Envelope]) -> PublishReport:
        """Send every valid event in one batch; invalid ones are reported, not sent."""
        report = PublishReport()
        good = []
        for e in events:
            try:
                self.check(e)
                good.append(e)
            except InvalidEvent as err:
                report.invalid.append((e.id, err))
        await self._deliver(good)
        report.sent = [e.id for e in good]
        return report

    async def _deliver(self, events: list[Envelope]) -> None:
        pending = events
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            if not pending:
                return
            futures = []
            for e in pending:
                try:
                    futures.append(
                        await self._producer.send(self.topic, to_json(e), key=e.key(), headers=self._headers)
                    )
                except KafkaError as err:
                    futures.append(_failed(err))
            results = await _settled(futures, self.delivery_timeout_s)
            failed = [(e, r) for e, r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
            pending = [e for e, _ in failed]
            if failed:
                last_error = failed[0][1]  # type: ignore[assignment]
                await asyncio.sleep(self.retry_backoff_s * (2**attempt))
        if pending:
            raise PublishError(
                f"{len(pending)} event(s) could not be delivered after {self.retries} retries: {last_error!r}",
                [(e.id, repr(last_error)) for e in pending],
            )


async def _settled(futures: list[asyncio.Future[Any]], timeout: float) -> list[Any]:
    """Each delivery's result or error, waiting at most ``timeout``: an idempotent producer
    keeps retrying a request the broker does not answer, so a delivery still open then
    counts as failed (TimeoutError) and is sent again; it may still land, so a retried
    event can arrive twice, with the same id (the cache and ClickHouse keep one)."""
    if futures:
        await asyncio.wait(futures, timeout=timeout)
    out: list[Any] = []
    for f in futures:
        if f.done():
            out.append(f.exception() or f.result())
        else:
            f.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning later
            out.append(TimeoutError(f"the broker did not acknowledge the event within {timeout} s"))
    return out


def _failed(err: Exception) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(err)
    return fut
