"""Helpers to test your own patterns without a broker: a settable clock, event builders,
and ``run_patterns`` that feeds a list of events through the matcher.

    from fabric.testing import ManualClock, ev, run_patterns

    out = run_patterns(YAML, [ev("deploy.finished", at=0, service="api"),
                              ev("log.entry", at=10, service="api", level="ERROR")])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fabric.cep.matcher import Composite, Late, Matcher, Output
from fabric.cep.patterns import Pattern, load_patterns
from fabric.cep.state import Position
from fabric.settings import Settings

__all__ = ["Composite", "Late", "ManualClock", "Position", "bearer", "composites", "ev", "operator", "run_patterns"]

#: what a copilot that reads everything and writes events may do
EVERYTHING = ("context:read:*", "composites:read", "events:write")


def bearer(
    settings: Settings, tenant: str, scopes: Iterable[str] = EVERYTHING, roles: Iterable[str] = (), **kw: Any
) -> dict[str, str]:
    """An ``Authorization`` header with a dev token (the router must share ``settings.data_dir``)."""
    from fabric.security.tokens import mint

    return {"Authorization": f"Bearer {mint(settings, tenant, list(scopes), roles=list(roles), **kw)}"}


def operator(settings: Settings, **kw: Any) -> dict[str, str]:
    """An ``Authorization`` header for the platform operator (changes schemas, routing)."""
    from fabric.security.tokens import OPERATOR_SCOPE

    return bearer(settings, settings.security.operator_tenant, ["admin", OPERATOR_SCOPE], **kw)


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, now_ms: int = 0) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now

    def set(self, now_ms: int) -> None:
        self.now = now_ms

    def advance(self, ms: int) -> None:
        self.now += ms


_counter = iter(range(1, 1 << 62))


def ev(
    type: str, at: float, subject: str = "s", tenant: str = "t", id: str | None = None, **data: Any
) -> dict[str, Any]:
    """An envelope dict at ``at`` seconds (event time) with ``data`` from the keywords."""
    return {"id": id or f"e{next(_counter)}", "type": type, "subject": subject, "tenant": tenant,
            "source": "test", "time": int(at * 1000), "data": data}  # fmt: skip


def run_patterns(
    patterns: str | Iterable[Pattern],
    events: Iterable[Mapping[str, Any] | tuple[Mapping[str, Any], Position]],
    *,
    clock: ManualClock | None = None,
    flush_to_ms: int | None = None,
) -> list[Output]:
    """Feed events (optionally with their Kafka position) through the patterns, in the
    order given; then, if ``flush_to_ms`` is set, advance the watermark to it."""
    compiled = load_patterns(patterns) if isinstance(patterns, str) else list(patterns)
    m = Matcher(compiled, clock=clock or ManualClock())
    out: list[Output] = []
    for item in events:
        if isinstance(item, tuple):
            out += m.process(item[0], item[1])
        else:
            out += m.process(item)
    if flush_to_ms is not None:
        out += m.advance_to(flush_to_ms)
    return out


def composites(outputs: Iterable[Output]) -> list[Composite]:
    return [o for o in outputs if isinstance(o, Composite)]
