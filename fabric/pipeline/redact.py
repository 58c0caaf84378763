"""Redaction: PII and secrets masked in ``data`` before an event reaches a typed topic,
the cache or ClickHouse (processor ``redact``, on by default).

Rules say which context types and sensitivities they cover, which detectors run over
string values, and which keys are masked whole whatever they hold. A masked match
becomes ``[email]``, ``[phone]``, ``[card]``, ``[national_id]`` or ``[secret]``; a key
masked whole becomes ``[redacted]``. The event then carries ``redacted``: how many
fields were masked. The router's HTTP edge masks with the same rules before it
produces to ``ctx.ingest`` (and says how many in the ``fabric_redacted`` header); the
route stage masks what other producers wrote there. Rules come from ``worker.processor_options.redact.rules`` or the
bundled ``fabric/schemas/policies/redaction.yaml``; docs/extending.md shows the form.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fabric.errors import ConfigError
from fabric.events.catalogue import Catalogue
from fabric.pipeline.processors import Event, Processor
from fabric.settings import BUNDLED, Settings

Detector = Literal["email", "phone", "card", "national_id", "secret"]
Level = Literal["public", "internal", "confidential", "restricted"]

_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "phone": r"(?<![\w+.])(?<!\d[ -])(?:\+\d{1,3}[ -]?)?(?:\(\d{2,4}\) ?|\d{2,4}[ -])\d{3,4}[ -]\d{3,4}(?![\w.])(?![ -]\d)",
    "card": r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)",
    "national_id": r"(?<!\d)(?:\d{3}-\d{2}-\d{4}|\d{17}[\dXx])(?![\w-])",
    "secret": r"(?:\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|(?i:\bbearer\s+)[A-Za-z0-9._~+/-]{20,}=*"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----)",
}


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cn_id(text: str) -> bool:
    """The ISO 7064 check character of an 18-character PRC resident identity number."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(c) * w for c, w in zip(text[:17], weights, strict=True))
    return "10X98765432"[total % 11] == text[17].upper()


def _confirmed(detector: str, match: str) -> bool:
    """Checks a regex cannot make: card numbers pass Luhn, national ids their check digit."""
    if detector == "card":
        digits = re.sub(r"\D", "", match)
        return 13 <= len(digits) <= 19 and _luhn(digits)
    if detector == "national_id" and len(match) == 18:
        return _cn_id(match)
    return True


class Rule(BaseModel):
    """One redaction rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context_types: list[str] = Field(["*"], description="context type names or globs the rule covers")
    sensitivity: list[Level] = Field(
        ["public", "internal", "confidential", "restricted"], description="event sensitivities the rule covers"
    )
    detect: list[Detector] = Field(
        ["email", "phone", "card", "national_id", "secret"], description="detectors run over every string value"
    )
    keys: list[str] = Field([], description="keys (globs, any case) whose string values are masked whole")


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule]


def load_rules(options: dict[str, Any]) -> list[Rule]:
    """Rules from the processor's options (``rules`` inline, or ``rules_file``), else the bundled file."""
    if "rules" in options:
        doc: Any = {"rules": options["rules"]}
        origin = "worker.processor_options.redact.rules"
    else:
        path = Path(options.get("rules_file") or BUNDLED / "policies" / "redaction.yaml")
        origin = str(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{origin}: {e}") from e
    try:
        return Rules.model_validate(doc).rules
    except ValidationError as e:
        where = ".".join(str(p) for p in e.errors()[0]["loc"])
        raise ConfigError(f"{origin}: {where}: {e.errors()[0]['msg']}") from e


class _Plan:
    """What to look for in one context type at one sensitivity (rules merged)."""

    def __init__(self, detectors: set[str], keys: set[str]) -> None:
        self.detectors = [(d, re.compile(_PATTERNS[d])) for d in sorted(detectors)]
        self.keys = [re.compile(fnmatch.translate(k.lower())) for k in sorted(keys)]
        # one cheap pass over the raw JSON decides whether the event needs decoding at all
        alts = [_PATTERNS[d] for d in sorted(detectors)] + [rf'"{fnmatch.translate(k)[4:-3]}"\s*:' for k in keys]
        self.precheck = re.compile("|".join(f"(?:{a})" for a in alts).encode(), re.IGNORECASE) if alts else None

    def key_masked(self, key: str) -> bool:
        low = key.lower()
        return any(k.fullmatch(low) for k in self.keys)

    def mask_text(self, text: str) -> str:
        for name, rx in self.detectors:
            text = rx.sub(lambda m, n=name: f"[{n}]" if _confirmed(n, m.group()) else m.group(), text)  # type: ignore[misc]
        return text


class Redaction(Processor):
    """Masks PII and secrets in ``data`` by the rules; counts masked fields in ``redacted``."""

    name = "redact"

    def __init__(self, settings: Settings, catalogue: Catalogue, options: dict[str, Any]) -> None:
        super().__init__(settings, catalogue, options)
        self.rules = load_rules(options)
        self._plans: dict[tuple[str, str], _Plan | None] = {}

    def plan(self, context_type: str, sensitivity: str) -> _Plan | None:
        key = (context_type, sensitivity)
        if key not in self._plans:
            detectors: set[str] = set()
            keys: set[str] = set()
            for r in self.rules:
                if sensitivity in r.sensitivity and any(fnmatch.fnmatchcase(context_type, g) for g in r.context_types):
                    detectors.update(r.detect)
                    keys.update(r.keys)
            self._plans[key] = _Plan(detectors, keys) if detectors or keys else None
        return self._plans[key]

    def mask(self, context_type: str, sensitivity: str, raw: bytes, data: Any) -> tuple[Any, int]:
        """``data`` (whose JSON is ``raw``) with what the rules find masked, and how many
        fields that changed; ``data`` is only walked when the raw JSON has a candidate."""
        plan = self.plan(context_type, sensitivity)
        if plan is None or plan.precheck is None or not plan.precheck.search(raw):
            return data, 0
        return _mask(data, plan)

    def process(self, events: list[Event]) -> None:
        for ev in events:
            env = ev.envelope
            before = ev.extensions.get("redacted", 0)
            plan = self.plan(ev.context_type.name, env.sensitivity)
            if plan is None or plan.precheck is None or not plan.precheck.search(ev.raw_data):
                continue
            data, n = _mask(ev.data, plan)
            if n:
                ev.data = data
                ev.extensions["redacted"] = before + n


def _mask(value: Any, plan: _Plan) -> tuple[Any, int]:
    """The value with what the plan finds masked, and how many string fields changed."""
    if isinstance(value, str):
        masked = plan.mask_text(value)
        return masked, int(masked != value)
    if isinstance(value, dict):
        n = 0
        out = {}
        for k, v in value.items():
            if isinstance(v, str) and plan.key_masked(str(k)):
                out[k], hit = "[redacted]", int(v != "[redacted]")
            else:
                out[k], hit = _mask(v, plan)
            n += hit
        return out, n
    if isinstance(value, list):
        items = [_mask(v, plan) for v in value]
        return [v for v, _ in items], sum(h for _, h in items)
    return value, 0
