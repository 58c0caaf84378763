"""The shapes the router answers with, shared by the router and the consumer SDK.

Each is generic in the event's form: the router fills in ``msgspec.Raw`` (the cached
event JSON, spliced into the response without re-encoding); the SDK decodes the same
shapes with ``dict[str, Any]`` events (``fabric.client``).
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

E = TypeVar("E")


class Context(msgspec.Struct, Generic[E]):
    """A pull: the latest context of a subject with its freshness (stream types add ``window``)."""

    context_type: str
    subject: str
    sequence: int
    as_of: str
    age_ms: int
    stale: bool
    watermark_lag_ms: int
    sensitivity: str
    changes: int
    event: E
    window: list[E] | None = None
    #: the quality processor's score, lowered past the type's TTL (fabric.pipeline.quality)
    quality: float | None = None


class ContextList(msgspec.Struct, Generic[E]):
    context_type: str
    items: list[Context[E]]


class Update(msgspec.Struct, Generic[E]):
    """One pushed change; ``resume`` is where a reconnect picks up."""

    context_type: str
    type: str
    subject: str
    sequence: int
    as_of: str
    age_ms: int
    stale: bool
    sensitivity: str
    resume: str
    event: E
    quality: float | None = None


class Provenance(msgspec.Struct, omit_defaults=True):
    source: str
    id: str
    type: str
    provider: str | None = None
    topic: str | None = None


class Item(msgspec.Struct, Generic[E]):
    """One context in an assembled bundle."""

    context_type: str
    subject: str
    tokens: int
    as_of: str
    age_ms: int
    stale: bool
    watermark_lag_ms: int
    provenance: Provenance
    event: E
    quality: float | None = None


class Omitted(msgspec.Struct):
    """What a section left out, by reason."""

    budget: int = 0
    stale: int = 0
    withheld: int = 0
    quality: int = 0  # under the policy's min_quality


class Section(msgspec.Struct, Generic[E]):
    context_type: str
    items: list[Item[E]]
    omitted: Omitted


class Bundle(msgspec.Struct, Generic[E]):
    """``POST /v1/assemble``: sections in policy order within the token budget."""

    subject: str
    policy: str
    version: int
    budget_tokens: int
    used_tokens: int
    sections: list[Section[E]]

    def items(self) -> list[Item[E]]:
        """Every item, in policy order."""
        return [i for s in self.sections for i in s.items]
