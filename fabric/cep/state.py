"""What a running pattern keeps: the events it saw (slimmed), its partial matches, windows,
sessions and timers, as typed, slotted records. ``PatternRun`` (matcher.py) changes them;
``checkpoint.py`` writes and reads them."""

from __future__ import annotations

import bisect
import enum
import itertools
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from fabric.cep.watermark import PartitionWatermark


@dataclass(frozen=True, slots=True)
class Position:
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Ev:
    time_ms: int
    event: Mapping[str, Any]
    #: where the matcher read it (replay after a restore starts from these)
    position: Position | None
    #: where it was first written, when the matcher reads a re-keyed copy: names the
    #: event in composites, and its partition is the one that holds the watermark back
    source: Position | None = None

    def slim(self) -> Ev:
        """What state keeps of a matched event: enough to name it in a composite."""
        return Ev(self.time_ms, {"id": self.event.get("id")}, self.position, self.source)

    def ref(self) -> dict[str, Any]:
        p = self.source or self.position
        return {"id": self.event.get("id"), "time_ms": self.time_ms,
                "topic": p.topic if p else None, "partition": p.partition if p else None,
                "offset": p.offset if p else None}  # fmt: skip


class TimerKind(enum.Enum):
    """What a timer is for; each has one handler in ``PatternRun``."""

    EXPIRE = "expire"  # a sequence's partial match runs out of time
    ABSENCE = "absence"  # the awaited event did not come: fire
    WINDOW = "window"  # a tumbling or hopping window closes
    SLIDE = "slide"  # a sliding window has emptied: forget its key
    SESSION = "session"  # a session's gap has passed: close it


class Timer(NamedTuple):
    """A heap entry: due time first, then a unique sequence number (so kinds never compare)."""

    due: int
    seq: int
    kind: TimerKind
    key: Any
    token: Any


@dataclass(slots=True)
class Partial:
    """A sequence under way for one key."""

    step: int
    count: int
    events: list[Ev]
    first_ms: int
    matched: set[int]
    token: int = 0


@dataclass(slots=True)
class Pending:
    """An absence under way: the first event came, the second must come by ``deadline``."""

    deadline: int
    first: Ev
    token: int


@dataclass(slots=True)
class Slot:
    """One tumbling or hopping window of one key."""

    values: list[Any] = field(default_factory=list)
    events: list[Ev] = field(default_factory=list)


@dataclass(slots=True)
class Session:
    """One session window of one key: from ``start`` to ``last`` plus the gap."""

    start: int
    last: int
    values: list[Any] = field(default_factory=list)
    events: list[Ev] = field(default_factory=list)


class Sliding:
    """Values of a sliding window kept sorted, so p95/min/max need no sort per event."""

    __slots__ = ("armed", "events", "sorted", "total")

    def __init__(self) -> None:
        self.events: deque[tuple[int, float, Ev]] = deque()
        self.sorted: list[float] = []
        self.total = 0.0
        self.armed = False

    def add(self, t: int, v: float, ev: Ev) -> None:
        self.events.append((t, v, ev))
        bisect.insort(self.sorted, v)
        self.total += v

    def evict_until(self, t: int) -> None:
        while self.events and self.events[0][0] <= t:
            _, v, _ = self.events.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, v)]
            self.total -= v


K = TypeVar("K")
V = TypeVar("V")


class Bounded(OrderedDict[K, V]):
    """A mapping that forgets its oldest entries past ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


#: event ids remembered per pattern, so an event delivered twice is applied once
APPLIED_IDS = 20_000


class RunState:
    """Everything one pattern keeps between events (bounded by its ``max_keys``)."""

    __slots__ = ("applied", "buffer", "clock", "partials", "pending", "seq", "sessions", "sliding", "timers", "windows")

    def __init__(self, max_keys: int, lateness_ms: int) -> None:
        self.seq = itertools.count()
        self.clock = PartitionWatermark(lateness_ms)
        self.buffer: list[tuple[int, int, Ev]] = []  # events waiting for the watermark, by time
        self.timers: list[Timer] = []
        self.partials: Bounded[str, Partial] = Bounded(max_keys)
        self.pending: Bounded[str, Pending] = Bounded(max_keys)
        self.windows: Bounded[tuple[str, int], Slot] = Bounded(max_keys)
        self.sessions: Bounded[str, Session] = Bounded(max_keys)
        self.sliding: Bounded[str, Sliding] = Bounded(max_keys)
        self.applied: Bounded[Any, None] = Bounded(APPLIED_IDS)  # ids of the latest events applied

    def size(self) -> int:
        return len(self.partials) + len(self.pending) + len(self.windows) + len(self.sessions) + len(self.sliding)
