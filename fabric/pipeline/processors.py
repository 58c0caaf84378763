"""The door for users' own processing: ``Processor`` works on a batch of routed events.

The route stage decodes, validates and stamps each event, then hands the batch to the
configured processors in order (``worker.processors``), then encodes what is left for
the typed topics. A processor may, per event:

- read and change ``data`` (a plain dict; the changed event is validated again against
  its context type, so a processor cannot publish what the schema refuses),
- change envelope attributes (``event.envelope`` is a ``msgspec`` struct),
- re-route it to another context type (``event.reroute(name)``),
- drop it (``event.drop()``: a filter; counted, not dead-lettered),
- dead-letter it with a reason (``event.dead_letter("why")``: it goes to ``ctx.dlq``
  with that reason, the rest of the batch goes on),
- add served attributes (``event.extensions["x"] = ...``: they appear in the event as
  pulls and pushes show it), or warnings (``event.warn("...")``: they lower its quality).

A processor is found by name: an entry point in the ``fabric.processors`` group (how a
package adds one: see docs/extending.md), or a dotted path ``package.module:Class``.
Its options come from ``worker.processor_options[name]``. An exception a processor
raises is run again event by event, and the events it still fails on are
dead-lettered naming the processor; the rest of the batch goes on.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any, ClassVar

import msgspec

from fabric.errors import ConfigError
from fabric.events.catalogue import Catalogue, ContextType
from fabric.events.envelope import Envelope
from fabric.settings import Settings

GROUP = "fabric.processors"

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


class Event:
    """One routed event as a processor sees it."""

    __slots__ = (
        "_cat", "_changed", "_data", "_typed", "context_type", "dead", "dropped", "envelope", "extensions", "warnings",
    )  # fmt: skip

    def __init__(self, envelope: Envelope, context_type: ContextType, catalogue: Catalogue, typed: Any = None) -> None:
        self.envelope = envelope
        self._typed = typed
        self.context_type = context_type
        self.extensions: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.dropped = False
        self.dead: str | None = None
        self._data: Any = None
        self._changed = False
        self._cat = catalogue

    @property
    def data(self) -> Any:
        """The event's data as plain Python objects, decoded on first use; changes made to
        it in place count once ``changed()`` is called, or assign a new value."""
        if self._data is None:
            self._data = _decode.decode(self.envelope.data)
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = value
        self._changed = True
        self._typed = None

    def changed(self) -> None:
        """Say that ``data`` was changed in place."""
        self._changed = True

    def field(self, name: str) -> Any:
        """One top-level field of the data, read without decoding the data again when the
        route stage's validated copy is still current (None when absent)."""
        if self._typed is not None and not self._changed:
            return getattr(self._typed, name, None)
        data = self.data
        return data.get(name) if isinstance(data, dict) else None

    @property
    def raw_data(self) -> bytes:
        """The data as JSON bytes, without decoding it (cheap checks before ``data``)."""
        return bytes(self.envelope.data)

    def reroute(self, context_type: str) -> None:
        """Send the event to another context type (its data must fit that type's schema)."""
        if context_type not in self._cat.context_types:
            raise ConfigError(f"reroute: unknown context type {context_type!r}")
        self.context_type = self._cat.context_types[context_type]
        self.envelope = msgspec.structs.replace(self.envelope, contexttype=context_type)
        self._changed = True

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def drop(self) -> None:
        self.dropped = True

    def dead_letter(self, reason: str) -> None:
        self.dead = reason

    @property
    def live(self) -> bool:
        return not self.dropped and self.dead is None

    def settle(self) -> tuple[Envelope, Any] | None:
        """After the processors: the envelope with changed data written back, and the data
        decoded against the (maybe new) context type; None when nothing changed."""
        if not self._changed:
            return None
        env = msgspec.structs.replace(self.envelope, data=msgspec.Raw(_encode.encode(self.data)))
        return env, self._cat.schemas.data_decoder(self.context_type.name).decode(env.data)


class Processor(abc.ABC):
    """Subclass this, give it a ``name`` and a ``process``; the worker builds one per route
    stage with the settings, the catalogue and its options, and calls it once per batch."""

    name: ClassVar[str] = ""

    def __init__(self, settings: Settings, catalogue: Catalogue, options: dict[str, Any]) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.options = options

    @abc.abstractmethod
    def process(self, events: list[Event]) -> None:
        """Look at or change the batch's events (only live ones are passed); no I/O that
        blocks: a batch holds the stage's event loop while it runs."""


def _find(name: str) -> type[Processor]:
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            found = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"worker.processors: cannot load {name!r}: {e}") from e
    else:
        eps = [ep for ep in entry_points(group=GROUP) if ep.name == name]
        if not eps:
            known = sorted(ep.name for ep in entry_points(group=GROUP))
            raise ConfigError(f"worker.processors: no processor named {name!r} (installed: {', '.join(known)})")
        found = eps[0].load()
    if not (isinstance(found, type) and issubclass(found, Processor)):
        raise ConfigError(f"worker.processors: {name!r} is not a fabric.pipeline.processors.Processor subclass")
    return found


def load_processors(settings: Settings, catalogue: Catalogue) -> list[Processor]:
    """The configured processors, built, in their declared order."""
    out = []
    for name in settings.worker.processors:
        cls = _find(name)
        out.append(cls(settings, catalogue, dict(settings.worker.processor_options.get(name, {}))))
    return out


def run_processors(processors: Iterable[Processor], events: list[Event]) -> None:
    """Run each processor over the events still live. One that raises is run again one
    event at a time: the events it fails on are dead-lettered naming it, the rest go on."""
    for p in processors:
        live = [e for e in events if e.live]
        if not live:
            return
        try:
            p.process(live)
        except Exception:  # a user's processor: find the event it fails on, keep the rest
            for ev in live:
                if not ev.live:
                    continue
                try:
                    p.process([ev])
                except Exception as e:
                    ev.dead_letter(f"processor {p.name or type(p).__name__} failed: {type(e).__name__}: {e}"[:500])
