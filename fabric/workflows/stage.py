"""The reactions stages: typed topics -> workflow runs -> other systems.

    typed topics ──► [workflow-triggers: match] ──► <prefix>.workflow-triggers (key: run id)
                                                        │
                            [workflows: run] ◄──────────┘ ──► HTTP, MCP tools, Kafka
                               │   ▲                       ──► workflow.* events into <prefix>.ingest
                               ▼   │ restore on assignment  ──► <prefix>.workflow-history ─► sink ─► ClickHouse
                            <prefix>.workflow-state (compacted: one record per run)

``TriggerStage`` reads every typed topic (composites and workflow outcomes included) and,
for each event that starts a workflow of its tenant, writes a run request keyed by the
run id, which is derived from (workflow version, trigger event id): an event read twice
asks for the same run twice, and the second request is ignored.

``WorkflowStage`` owns runs by the partition of their request. Its state is a changelog,
as a Faust table is: ``<prefix>.workflow-state`` has the same partitions, and run ``r``
of request partition ``p`` lives in state partition ``p``. When partitions are assigned,
their state partitions are read to the end and every unfinished run resumes from its last
record (``fabric.workflows.engine`` saves before each effect). A request's offset is
committed once its run's first state record is written, so a request is never lost and a
run never starts twice. Runs of revoked partitions stop where they are; their next owner
resumes them.

This path is low-rate and stateful, the place the design gives to Faust agents and
tables. It is built on the same aiokafka clients as the other stages instead (one client
module with the TLS/SASL/OAUTHBEARER settings, one lifecycle); docs/workflows.md has the
measurement that backs the choice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError
from prometheus_client import Counter, Gauge, Histogram

from fabric import kafka
from fabric.cep.stage import event_of
from fabric.errors import ConfigError
from fabric.events.catalogue import Catalogue
from fabric.kafka.compacted import read_partitions
from fabric.kafka.send import GroupSend, OutRecord, send_all
from fabric.kafka.topics import ensure_topics, typed_topics
from fabric.pipeline.stage import EVENTS, Stage
from fabric.security.audit import AuditLog
from fabric.settings import Settings
from fabric.workflows import governance
from fabric.workflows.actions import Actions, StepFailed, publish_event
from fabric.workflows.breaker import Breakers
from fabric.workflows.engine import Engine, now_ms
from fabric.workflows.runs import FINISHED, RunState, StepState, decode, encode, run_id
from fabric.workflows.source import WorkflowSource
from fabric.workflows.spec import ActionSpec, StepSpec, compile_workflow
from fabric.workflows.systems import Reach, System

log = logging.getLogger(__name__)

RUNS = Counter("fabric_workflow_runs_total", "Workflow runs that ended", ["outcome"])
STARTED = Counter("fabric_workflow_runs_started_total", "Workflow runs started")
STEP_SECONDS = Histogram(
    "fabric_workflow_step_seconds", "Time of one step attempt", ["kind", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip
OPEN_CIRCUITS = Gauge("fabric_workflow_open_circuits", "Target systems whose circuit is open (or half-open)")
RUNNING = Gauge("fabric_workflow_runs_running", "Workflow runs in progress in this worker")

REQUESTS, STATE, HISTORY, DLQ = "workflow-triggers", "workflow-state", "workflow-history", "workflow-dlq"


def workflow_topics(s: Settings) -> list[str]:
    return [s.topic(REQUESTS), s.topic(STATE), s.topic(HISTORY), s.topic(DLQ)]


def _own_endpoints(s: Settings) -> frozenset[tuple[str, int]]:
    """The fabric's own services, which no target system may be."""
    from urllib.parse import urlparse

    own: set[tuple[str, int]] = set()
    for hp in s.kafka.bootstrap.split(","):
        host, _, port = hp.strip().rpartition(":")
        if port.isdigit():
            own.add((host.strip("[]").lower() or "127.0.0.1", int(port)))
    for url in (s.redis.url, s.clickhouse.url):
        u = urlparse(url)
        if u.hostname and u.port:
            own.add((u.hostname.lower(), u.port))
    own.add((s.router.host.lower(), s.router.port))
    if s.worker.metrics_port:
        own.add(("127.0.0.1", s.worker.metrics_port))
    return frozenset(own)


def reach_of(s: Settings) -> Reach:
    return Reach(tuple(s.workflows.allowed_hosts), _own_endpoints(s))


class TriggerStage(Stage):
    """Typed topics -> run requests (see the module)."""

    stage = "workflow-triggers"

    def __init__(self, settings: Settings, catalogue: Catalogue, source: WorkflowSource, **kw: Any) -> None:
        super().__init__(settings, catalogue, **kw)
        self.source = source

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s, [*typed_topics(s, self.catalogue), *workflow_topics(s)])
        self.producer = kafka.producer(s)
        await kafka.start(s, self.producer)
        self.consumer = self.subscribe(typed_topics(s, self.catalogue), f"{s.kafka.group_prefix}.workflow-triggers")

    async def on_stop(self) -> None:
        if self.consumer:
            await self.consumer.stop()
        await self.producer.stop()

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        out: list[OutRecord] = []
        topic = self.settings.topic(REQUESTS)
        for recs in batch.values():
            for rec in recs:
                got = event_of(rec, self.catalogue)
                if got is None:
                    continue
                ev = got[1]
                for wf, doc in self.source.of(str(ev.get("tenant", ""))):
                    if not wf.spec.enabled or not wf.triggered_by(ev):
                        continue
                    if (
                        str(ev.get("type", "")).startswith("workflow.")
                        and ev.get("data", {}).get("workflow") == wf.name
                    ):
                        continue  # a workflow's own outcome never starts it again
                    rid = run_id(ev["tenant"], wf.name, wf.spec.version, str(ev.get("id", "")))
                    state = RunState(rid, ev["tenant"], wf.name, wf.spec.version, doc, ev)
                    out.append(OutRecord(topic, rid.encode(), encode(state)))
        if out:
            await send_all(self.producer, out)
            EVENTS.labels(self.stage, "requested").inc(len(out))


class StageHooks:
    """The engine's effects, on the real systems (see ``fabric.workflows.engine.Hooks``)."""

    def __init__(self, stage: WorkflowStage) -> None:
        self.stage = stage
        self.s = stage.settings
        self.pending_rows: list[OutRecord] = []

    def _row(self, row: dict[str, Any]) -> None:
        self.pending_rows.append(OutRecord(self.s.topic(HISTORY), row["run_id"].encode(), orjson.dumps(row)))

    async def save(self, state: RunState) -> None:
        self._row(run_row(state))
        rows, self.pending_rows = self.pending_rows, []
        partition = self.stage.partition_of.get(state.run_id)
        rows.append(OutRecord(self.s.topic(STATE), state.run_id.encode(), encode(state), partition=partition))
        await self.stage.durably(rows)

    async def act(
        self, state: RunState, action: ActionSpec, body: Any, system: System | None, key: str, timeout_s: float
    ) -> Any:
        a = self.stage.actions
        t0 = asyncio.get_running_loop().time()
        outcome = "failed"
        try:
            if action.kind == "http":
                assert system is not None
                async with a.bulkhead(system):
                    t0 = asyncio.get_running_loop().time()
                    result = await a.http_call(system, body.get("method", "POST"), body["path"], body.get("body"),
                                               key, state, timeout_s)  # fmt: skip
            elif action.kind == "mcp":
                assert system is not None
                async with a.bulkhead(system):
                    t0 = asyncio.get_running_loop().time()
                    result = await a.mcp_call(system, body["tool"], body.get("arguments", {}), key, timeout_s)
            elif action.kind == "kafka":
                result = await asyncio.wait_for(
                    a.kafka_record(body["topic"], body.get("key"), body.get("value"), key), timeout_s)  # fmt: skip
            else:
                result = await a.fabric_event(state, body["type"], body["subject"], body.get("data", {}), key)
            outcome = "succeeded"
            return result
        except TimeoutError:
            raise StepFailed("timeout", f"{action.kind} action did not finish within {timeout_s:g} s") from None
        except StepFailed:
            raise
        except Exception as e:
            if isinstance(e, ConfigError):  # a missing secret, an endpoint not allowed
                raise StepFailed("refused", str(e)) from None
            raise StepFailed("unavailable", f"{action.kind} action failed: {type(e).__name__}: {e}") from None
        finally:
            STEP_SECONDS.labels(action.kind, outcome).observe(asyncio.get_running_loop().time() - t0)
            OPEN_CIRCUITS.set(len(self.stage.breakers.open()))

    def refusal(self, state: RunState, step: StepSpec, action: ActionSpec, template: Any, system: System | None) -> str:
        return governance.refusal(state, step, action, template, system)

    def audit(self, state: RunState, step: str, system: str, decision: str, outcome: str) -> None:
        self.stage.audit.record(
            None, "workflow.step", f"{state.workflow}@{state.version}/{state.run_id}/{step} -> {system}", decision,
            outcome[:500], state.run_id, tenant=state.tenant,
        )  # fmt: skip

    def attempt(self, state: RunState, step: StepState, attempt: int, outcome: str, error: str,
                started_ms: int, ended_ms: int) -> None:  # fmt: skip
        self._row({
            "kind": "step", "tenant": state.tenant, "run_id": state.run_id, "workflow": state.workflow,
            "version": state.version, "phase": step.phase, "step": step.id, "system": step.system,
            "action": step.kind, "attempt": attempt, "outcome": outcome, "error": error[:2000],
            "started_ms": started_ms, "ended_ms": ended_ms,
        })  # fmt: skip

    async def announce(self, state: RunState, etype: str, data: dict[str, Any]) -> None:
        event_id = hashlib.sha256(f"{state.run_id}\0{etype}\0{data.get('phase', '')}".encode()).hexdigest()[:32]
        subject = f"{state.workflow}/{state.run_id}"
        await publish_event(self.stage.producer, self.s.topic("ingest"), state, etype, subject, data, event_id)

    async def dead_letter(self, state: RunState, retry: bool) -> None:
        headers = [("fabric_error_reason", state.reason.encode()), ("fabric_workflow", state.workflow.encode()),
                   ("fabric_run_id", state.run_id.encode()),
                   ("fabric_fallback", b"queue_for_retry" if retry else b"fail")]  # fmt: skip
        await self.stage.durably(
            [OutRecord(self.s.topic(DLQ), state.run_id.encode(), orjson.dumps(state.trigger), headers)]
        )

    def finished(self, state: RunState) -> None:
        RUNS.labels(state.status.value).inc()


def run_row(state: RunState) -> dict[str, Any]:
    return {
        "kind": "run", "tenant": state.tenant, "run_id": state.run_id, "workflow": state.workflow,
        "version": state.version, "status": state.status.value, "reason": state.reason,
        "trigger_id": state.trigger_id, "trigger_type": str(state.trigger.get("type", "")),
        "started_ms": state.started_ms, "ended_ms": state.ended_ms, "updated_ms": now_ms(),
        "phases": {p.id: {"status": p.status.value, "started_ms": p.started_ms, "ended_ms": p.ended_ms,
                          "sla_breached": p.sla_breached} for p in state.phases.values()},
    }  # fmt: skip


class WorkflowStage(Stage):
    """Run requests -> runs, state in a changelog (see the module)."""

    stage = "workflows"

    def __init__(self, settings: Settings, catalogue: Catalogue, source: WorkflowSource, **kw: Any) -> None:
        super().__init__(settings, catalogue, **kw)
        self.source = source
        self.breakers = Breakers()
        self.runs: dict[str, asyncio.Task[None]] = {}
        self.partition_of: dict[str, int] = {}
        #: runs that ended, newest last (bounded; the changelog has them all)
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.slots = asyncio.Semaphore(settings.workflows.max_running)

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s, [s.topic("ingest"), s.topic("audit"), *workflow_topics(s)])
        self.producer: AIOKafkaProducer = kafka.producer(s, linger_ms=0)
        await kafka.start(s, self.producer)
        self.writer = GroupSend(self.producer)
        self.audit = AuditLog(self.producer, s.topic("audit"), s.security.audit_buffer, origin="workflows")
        self.audit.start()
        self.actions = Actions(self.producer, s.topic("ingest"), f"{s.kafka.topic_prefix}.", reach_of(s),
                               s.workflows.signature_header)  # fmt: skip
        self.hooks = StageHooks(self)
        self.engine = Engine(self.hooks, self.source.system, self.breakers)
        self.consumer = self.subscribe([s.topic(REQUESTS)], f"{s.kafka.group_prefix}.workflows")

    async def on_stop(self) -> None:
        await self._stop_runs(list(self.runs))
        await self.writer.close()
        if self.consumer:
            await self.consumer.stop()
        await self.audit.stop()
        await self.actions.close()
        await self.producer.stop()

    async def assigned(self, tps: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in tps]
        states = await read_partitions(self.settings, self.settings.topic(STATE), parts)
        resumed = 0
        for rid, (partition, raw) in states.items():
            if raw is None or rid in self.runs:
                continue
            state = decode(raw)
            if state.status in FINISHED and state.announced:
                self._remember(rid)
                continue
            self.partition_of[rid] = partition
            self._spawn(state)
            resumed += 1
        if resumed:
            log.info("workflows: resumed %d runs of partitions %s", resumed, parts)

    async def revoked(self, tps: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in tps}
        await self._stop_runs([rid for rid in self.runs if self.partition_of.get(rid) in parts])

    async def _stop_runs(self, rids: list[str]) -> None:
        tasks = [self.runs.pop(r) for r in rids if r in self.runs]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def durably(self, records: list[OutRecord]) -> None:
        """Send ``records`` with every other run's (one batch per partition per round), until
        they are delivered: a broker pushing back (a timeout, a leader moving) delays the run,
        it does not stop it. Errors that no retry cures (a record too large) raise."""
        delay = 0.1
        while True:
            try:
                await self.writer.send(records)
                return
            except KafkaError as e:
                if not (e.retriable or isinstance(e, KafkaTimeoutError)):
                    raise
                log.warning("workflows: saving %d records failed (%s: %s); again in %.1f s",
                            len(records), type(e).__name__, e, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _remember(self, rid: str) -> None:
        self.finished[rid] = None
        self.finished.move_to_end(rid)
        while len(self.finished) > self.settings.workflows.remember_finished:
            self.finished.popitem(last=False)
        self.partition_of.pop(rid, None)

    def _spawn(self, state: RunState) -> None:
        self.runs[state.run_id] = asyncio.create_task(self._execute(state), name=f"workflow-run-{state.run_id}")
        RUNNING.set(len(self.runs))

    async def _execute(self, state: RunState) -> None:
        try:
            async with self.slots:
                await self.engine.run(state)
            self._remember(state.run_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # a broker that stays away while saving: the run stays where its changelog says,
            # and resumes when its partition is assigned again (or the worker restarts)
            log.exception("workflows: run %s of %s stopped", state.run_id, state.workflow)
        finally:
            if self.runs.get(state.run_id) is asyncio.current_task():
                self.runs.pop(state.run_id, None)
            RUNNING.set(len(self.runs))

    async def handle(self, batch: dict[Any, list[Any]]) -> None:
        new: list[RunState] = []
        for tp, recs in batch.items():
            for rec in recs:
                rid = (rec.key or b"").decode()
                if rid in self.runs or rid in self.finished:
                    continue  # asked for again (the trigger was read twice)
                try:
                    state = decode(rec.value)
                except Exception as e:  # a request not written by the trigger stage
                    log.error("workflows: unreadable run request at %s:%d: %s", tp, rec.offset, e)
                    continue
                self.partition_of[rid] = tp.partition
                new.append(state)
        if not new:
            return
        # the requests' first state records, durable before their offsets are committed
        for state in new:
            Engine.start(state, self._compiled(state))
        await self.durably([
            OutRecord(self.settings.topic(STATE), st.run_id.encode(), encode(st), partition=self.partition_of[st.run_id])
            for st in new
        ])  # fmt: skip
        for state in new:
            STARTED.inc()
            self._spawn(state)

    @staticmethod
    def _compiled(state: RunState) -> Any:
        return compile_workflow(state.spec)
