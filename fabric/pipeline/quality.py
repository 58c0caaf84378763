"""Context quality (processor ``quality``, on by default): how far a copilot can trust a context.

At routing time each event gets ``quality``, a score in [0, 1]:

    0.5 * completeness + 0.3 * source reliability + 0.2 * (1 - 0.25 * warnings, at least 0)

- completeness: the share of its context type's top-level data fields that are present
  and not empty (null, "", [] or {} count as missing);
- source reliability: from ``worker.processor_options.quality.sources``, a mapping of
  source globs to a number in [0, 1] (first match wins; 1 when none matches);
- warnings: what the route stage and earlier processors noted (an event that came
  without its own time, for one).

When it is served, the score is multiplied by its freshness (``served_quality``): 1 up
to the context type's TTL, then TTL / age. Pulls, pushes and assembly items carry the
served score; injection policies can leave out items under ``min_quality``.
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from fabric.events.catalogue import Catalogue, ContextType
from fabric.pipeline.processors import Event, Processor
from fabric.settings import Settings
from fabric.specs import parse

COMPLETENESS, RELIABILITY, CLEAN = 0.5, 0.3, 0.2
WARNING_COST = 0.25


class QualityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        {}, description="source glob -> reliability in [0, 1]"
    )


def score(completeness: float, reliability: float, warnings: int) -> float:
    clean = max(0.0, 1.0 - WARNING_COST * warnings)
    return round(COMPLETENESS * completeness + RELIABILITY * reliability + CLEAN * clean, 3)


def served_quality(quality: float | None, age_ms: int, ct: ContextType) -> float | None:
    """The routing-time score, lowered once the context is older than its type's TTL."""
    if quality is None:
        return None
    ttl_ms = ct.ttl_s * 1000
    if ttl_ms and age_ms > ttl_ms:
        return round(quality * ttl_ms / age_ms, 3)
    return quality


def _empty(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == {}


class Quality(Processor):
    """Scores each event (``quality``) by completeness, source reliability and warnings."""

    name = "quality"

    def __init__(self, settings: Settings, catalogue: Catalogue, options: dict[str, Any]) -> None:
        super().__init__(settings, catalogue, options)
        opts = parse(QualityOptions, options, "worker.processor_options.quality")
        self.sources = list(opts.sources.items())
        self._fields: dict[str, list[str]] = {}
        self._reliability: dict[str, float] = {}

    def fields(self, ct: str) -> list[str]:
        if ct not in self._fields:
            record = self.catalogue.schemas.data_raw(ct)
            self._fields[ct] = [f["name"] for f in record.get("fields", [])] if isinstance(record, dict) else []
        return self._fields[ct]

    def reliability(self, source: str) -> float:
        if source not in self._reliability:
            if len(self._reliability) > 10_000:
                self._reliability.clear()
            self._reliability[source] = next((r for g, r in self.sources if fnmatch.fnmatchcase(source, g)), 1.0)
        return self._reliability[source]

    def process(self, events: list[Event]) -> None:
        for ev in events:
            names = self.fields(ev.context_type.name)
            if names:
                completeness = sum(not _empty(ev.field(n)) for n in names) / len(names)
            else:
                completeness = 0.0 if _empty(ev.data) else 1.0
            ev.extensions["quality"] = score(completeness, self.reliability(ev.envelope.source), len(ev.warnings))
